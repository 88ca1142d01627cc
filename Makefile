# Two commands on a fresh machine:  `make demo`  (environment + whole pipeline on sample/)
#                                   `make test`  (environment + test suite)
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= output

.PHONY: demo readme-figures benchmark gpu-check any-image test env clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: env
	$(PY) preprocessing.py sample/images sample/Data_Entry_2017.csv sample/BBox_List_2017.csv \
		sample/train.txt sample/valid.txt $(OUT)/preprocessed
	$(PY) train.py $(OUT)/preprocessed --out $(OUT)/model --epochs 2 --repeats 2 --batch-size 8 --seed 0
	$(PY) denseNet_localization.py sample/test.txt sample/images \
		--model $(OUT)/model/best.pt --bbox-list sample/BBox_List_2017.csv --out $(OUT)/bounding_box.txt \
		--plots $(OUT)/plots --sheet-cell 160
	$(PY) tools/evaluate.py $(OUT)/bounding_box.txt sample/BBox_List_2017.csv --out $(OUT)/evaluation
	$(MAKE) --no-print-directory readme-figures

# The few small pictures that README.md shows (the only tracked files under output/), copied from
# this demo's run: one test image's boxes, probabilities and heatmap (its true class's when that
# class was detected, else its first detected class's), the contact sheet, the training curves.
FIG_IMAGE ?= 00009745_000
FIG_CLASS ?= Cardiomegaly
readme-figures:
	mkdir -p $(OUT)/README_figures
	rm -f $(OUT)/README_figures/heatmap.png
	cp $(OUT)/plots/$(FIG_IMAGE)_boxes.png $(OUT)/README_figures/boxes.png
	cp $(OUT)/plots/$(FIG_IMAGE)_probs.png $(OUT)/README_figures/probabilities.png
	for f in $(OUT)/plots/$(FIG_IMAGE)_heatmap_$(FIG_CLASS).png $(OUT)/plots/$(FIG_IMAGE)_heatmap_*.png; do \
		if [ -f "$$f" ]; then cp "$$f" $(OUT)/README_figures/heatmap.png; break; fi; done
	cp $(OUT)/plots/contact_sheet.png $(OUT)/model/training_curves.png $(OUT)/README_figures/

# The known-truth localization benchmark over three seeds, the CAM variants of README's table (on
# 2 CPU cores with native bf16 about 39 minutes, 10 of them to train each seed's model; without
# native bf16 about twice the training; every variant: --cams with all of bench_grid.CAM_VARIANTS;
# docs/benchmark_eight_findings.md).
benchmark: env
	$(PY) benchmarks/localization_benchmark.py --work $(OUT)/bench --seeds 0 1 7 \
		--cams gradcam layercam@db3 layercam@db2+db3 layercam-shortcut
	mkdir -p $(OUT)/README_figures
	cp $(OUT)/bench/seed_0/plots_peaks/contact_sheet.png $(OUT)/README_figures/synthetic_contact_sheet.png

# The GPU path in one run (benchmarks/README.md): the chain on CUDA, training speed, Grad-CAM against
# the CPU, the projection; one table and $(OUT)/gpu_check.json. Under 8 minutes on an H100/H200.
# GPU_CHECK_ARGS="--device cpu --tiny" runs the same code on a CPU in about a minute.
# `make gpu-check PY=python3` runs it with that interpreter's packages as they are, making no venv
# and installing nothing (a GPU machine has its own torch and often no network); with the default
# PY it makes the venv first, as every other target does.
GPU_CHECK_ARGS ?= --device cuda --compile
gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),env)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS) --json $(OUT)/gpu_check.json

# Any image, one image or a folder (after make demo: it uses the demo's model): a folder mixing
# DICOM, PNG and JPEG files of several sizes, made from sample/, localized in one command.
any-image: env
	$(PY) tools/example_scans.py $(OUT)/any_image
	$(PY) denseNet_localization.py $(OUT)/any_image --model $(OUT)/model/best.pt \
		--out $(OUT)/any_image_boxes.txt --plots $(OUT)/any_image_plots
	mkdir -p $(OUT)/README_figures
	cp $(OUT)/any_image_plots/chest_2048x2500_boxes.png $(OUT)/README_figures/any_image_boxes.png

test: env
	$(PY) -m pytest -q tests

clean:
	rm -rf $(OUT)/preprocessed $(OUT)/model $(OUT)/bounding_box.txt $(OUT)/plots $(OUT)/evaluation \
		$(OUT)/any_image $(OUT)/any_image_boxes.txt $(OUT)/any_image_plots
