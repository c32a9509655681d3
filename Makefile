# Quick start: `make demo` (install, then train + evaluate the demo on sample data) and
# `make test` (install, then the test suite). Both install into .venv once; re-runs skip it.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_CONFIG := configs/demo/mask-rcnn_las-r50-4421_fpn_sample.py
DEMO_DIR := work_dirs/demo

.PHONY: install demo test

install: $(INSTALLED)

# mmcv 2.1.0 has no wheel with ops on PyPI: it is built from source against the installed
# torch (about 15 minutes on 2 cores, once; pip caches the wheel).
$(INSTALLED): setup.py requirements/*.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH)" -r requirements/build.txt
	MAX_JOBS=$${MAX_JOBS:-2} $(BIN)/pip install --no-build-isolation -r requirements/mminstall.txt
	$(BIN)/pip install -r requirements/runtime.txt -r requirements/tests.txt
	$(BIN)/pip install --no-build-isolation --no-deps -e .
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/python tools/make_sample_data.py data/sample_coco
	$(BIN)/python tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_DIR)
	$(BIN)/python tools/test.py $(DEMO_CONFIG) $(DEMO_DIR)/epoch_12.pth --work-dir $(DEMO_DIR)

test: $(INSTALLED)
	$(BIN)/python -m pytest tests

# docs/recipe.md: dense Mask R-CNN R50 on 256 px sample data, then (a) continued dense vs
# (b) LAS-R50 with the from-dense recipe, 3 seeds; COCO AP, MACs ratio, per-block rates,
# CPU predict() time. SEEDS/EPOCHS override; seeds already in the work dir are reused.
RECIPE_DIR := work_dirs/recipe
SEEDS ?= 0 1 2
EPOCHS ?= 2
.PHONY: recipe-experiment
recipe-experiment: $(INSTALLED)
	$(BIN)/python tools/recipe_experiment.py --work-dir $(RECIPE_DIR) --seeds $(SEEDS) --epochs $(EPOCHS)
