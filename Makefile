PYTHON ?= python
ORACLE_DIR := .oracles/dinov2_official

.PHONY: install test-deps test demo bench

install:
	$(PYTHON) -m pip install -q -r requirements.txt

# the test oracles; the official DINOv2 code goes into an isolated folder (its package is also called dinov2)
test-deps: install
	$(PYTHON) -m pip install -q -r requirements-dev.txt
	test -f $(ORACLE_DIR)/dinov2/models/vision_transformer.py || \
		$(PYTHON) -m pip install -q --no-deps --target $(ORACLE_DIR) dinov2==0.0.1.dev2

test: test-deps
	$(PYTHON) -m pytest -q tests

bench: test-deps
	$(PYTHON) bench/bench_generate.py

demo:
	@echo "make demo: the toy data set and backbone it runs on are not built yet (see README, Status)." >&2; exit 1
