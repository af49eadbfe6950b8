PYTHON ?= python
ORACLE_DIR := .oracles/dinov2_official

.PHONY: install test-deps test test-fast demo toy-backbone bench

install:
	$(PYTHON) -m pip install -q -r requirements.txt

# the test oracles; the official DINOv2 code goes into an isolated folder (its package is also called dinov2)
test-deps: install
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	test -f $(ORACLE_DIR)/dinov2/models/vision_transformer.py || \
		$(PYTHON) -m pip install -q --no-deps --target $(ORACLE_DIR) dinov2==0.0.1.dev2
	@# headless Chromium for the field guide's browser test (Debian packages), skipped when already there
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && apt-get install -y -q chromium chromium-driver; }

# the linter first (its rules are in pyproject.toml), then the whole suite, one pytest-xdist worker a core
test: test-deps
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -n auto tests

# the tests not marked slow (pytest.ini), about a minute on two CPU cores
test-fast: test-deps
	$(PYTHON) -m pytest -q -n auto -m "not slow" tests

bench: test-deps
	$(PYTHON) bench/bench_generate.py

# the whole pipeline on the embedded toy world (data generated once into datasets/toy, outputs in outputs/demo)
demo: install
	$(PYTHON) -m finer_cam.demo

# retrain the shipped toy backbone (bit for bit; see pretrained_models/toy/README.md for the flags and the time)
toy-backbone: install
	$(PYTHON) -m finer_cam.toy backbone
