"""Every number the pipeline shares, defined once, with where it comes from.

Nothing here runs: these are plain names that the scripts and modules import.
"""

# The 8 ChestX-ray14 findings that have ground-truth boxes in BBox_List_2017.csv, in the
# order of the original project (and of CheXNet's first 8 classes). Model outputs, label
# matrices, thresholds and box-size tables all use this order.
CLASS_NAMES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)

# All 14 findings of the label table ('No Finding' stands alone and is not a finding).
ALL_FINDINGS = CLASS_NAMES + (
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"

# The class sets of --classes: the original's 8 (default) or CheXNet's 14. Both begin with the 8
# box classes in the same order, so a class index below 8 means the same box class in either.
CLASS_SETS = {8: CLASS_NAMES, 14: ALL_FINDINGS}

# BBox_List_2017.csv spells one class differently from the label table: map it on read.
BOX_TABLE_ALIASES = {"Infiltrate": "Infiltration"}

# Geometry. NIH images are 1024x1024; preprocessing stores 256x256; the network sees the
# 224x224 centre crop (train: random crop). The centre crop starts 16 px inside the 256
# image, and one 256-pixel is 4 original pixels: x_1024 = (x_224 + 16) * 4.
ORIGINAL_SIZE = 1024
STORED_SIZE = 256
CROP_SIZE = 224
CROP_OFFSET = (STORED_SIZE - CROP_SIZE) // 2  # 16
RESCALE_FACTOR = ORIGINAL_SIZE // STORED_SIZE  # 4

# torchvision's ImageNet normalisation, which the pretrained DenseNet-121 expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Average box (x, y, w, h in the 1024 image) per class: the per-class mean of all 984
# boxes of BBox_List_2017.csv, as the original project hard-coded it. Used when no box
# table or calibrated sizes are given; nih.average_boxes() recomputes it from the file.
AVERAGE_BOXES = (
    (411.8, 512.5, 219.0, 139.1),  # Atelectasis
    (348.5, 392.3, 479.8, 381.1),  # Cardiomegaly
    (396.5, 415.8, 221.6, 318.0),  # Effusion
    (394.5, 389.1, 294.0, 297.4),  # Infiltration
    (434.3, 366.7, 168.7, 189.8),  # Mass
    (502.4, 458.7, 71.9, 70.4),  # Nodule
    (378.7, 416.7, 276.5, 304.5),  # Pneumonia
    (369.3, 209.4, 198.9, 246.0),  # Pneumothorax
)

# Grad-CAM target layer of the original project (its
# 'module.densenet121.features.denseblock4.denselayer16.conv.2' in PyTorch 0.2 names).
DEFAULT_TARGET_LAYER = "features.denseblock4.denselayer16.conv2"

# The original box heuristic on a 224x224 heatmap in [0, 1] (denseNet_localization.py).
PEAK_NEIGHBORHOOD = 100  # size of the max/min filters that find local maxima
PEAK_CONTRAST = 0.1  # a maximum counts where max - min over the neighbourhood exceeds this
PEAK_DILATIONS = 5  # binary dilations that merge nearby maxima before labelling
PEAK_KEEP_FRACTION = 0.9  # keep a peak whose heatmap value exceeds this share of the map's max

# The threshold box method (boxes.METHODS["threshold"]): regions where the heatmap is at least this
# share of its maximum. Half the maximum: a Gaussian blob's rectangle is then its full width at half
# maximum, the usual measure of a blob's extent. calibrate.py tunes it per class.
THRESHOLD_FRACTION = 0.5

# Box rules whose extent comes from the map alone (no size from any truth table), tuned per class
# by calibrate.py: regions at or above this percentile of the map's 224 x 224 values (95: the top
# 5% of the crop, about 50 x 50 crop pixels, 200 x 200 of the 1024 image, if in one piece) ...
REGION_PERCENTILE = 95.0
# ... or above this multiple of the map's Otsu threshold (1.0: Otsu's own, 256 bins over [0, 1]).
OTSU_SCALE = 1.0

# Decision threshold for a class whose validation set cannot give one (no positive or no
# negative example, so Youden's J is undefined).
DEFAULT_THRESHOLD = 0.5

# The original training recipe (train.py): Adam, lr 2e-4, betas (0.9, 0.999), batch 64, 10 epochs.
LEARNING_RATE = 2e-4
ADAM_BETAS = (0.9, 0.999)
BATCH_SIZE = 64
EPOCHS = 10
# The original trained on 4 random crop+flip copies of every image (its "aug4"): 4 passes per epoch.
REPEATS = 4

# Images per forward pass of denseNet_localization.py (--batch-size).
LOCALIZATION_BATCH_SIZE = 16
