# Two commands on a fresh machine:  `make demo`  (environment + whole pipeline on sample/)
#                                   `make test`  (environment + test suite)
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= output

.PHONY: demo test env clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: env
	$(PY) preprocessing.py sample/images sample/Data_Entry_2017.csv sample/BBox_List_2017.csv \
		sample/train.txt sample/valid.txt $(OUT)/preprocessed
	$(PY) train.py $(OUT)/preprocessed --out $(OUT)/model --epochs 2 --batch-size 8 --seed 0
	$(PY) denseNet_localization.py sample/test.txt sample/images \
		--model $(OUT)/model/best.pt --bbox-list sample/BBox_List_2017.csv --out $(OUT)/bounding_box.txt

test: env
	$(PY) -m pytest -q tests

clean:
	rm -rf $(OUT)/preprocessed $(OUT)/model $(OUT)/bounding_box.txt
