# Two commands on a fresh clone (see README):
#   make study   set up .venv, make the synthetic dataset if missing, run the comparison study
#   make test    set up .venv with the test extra, run the test suite
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DATA    ?= data/synthetic_mouse.zarr
SPACE   ?= comparison
ARGS    ?=

.PHONY: setup setup-test data study train test test-all bench clean-venv

# A torch that is already importable by $(PY) (e.g. a lab's CUDA build) is reused through
# --system-site-packages; otherwise the CPU wheel torch==2.13.0 is installed before anything else
# can pull a multi-GB CUDA build.
$(BIN)/python:
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "reusing the torch of $(PY)"; $(PY) -m venv --system-site-packages $(VENV); \
	else $(PY) -m venv $(VENV) && $(BIN)/pip install -q "torch==2.13.0"; fi

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

setup: $(VENV)/.installed

$(DATA): | $(VENV)/.installed
	$(BIN)/python -m posesplat.synth --out $(DATA)

data: $(DATA)

study: setup data
	$(BIN)/python -m study.run --space $(SPACE) $(ARGS)

train: setup data
	$(BIN)/python -m posesplat.train configs/2d_3d_comparison_3d_debug.json $(ARGS)

test: setup
	$(BIN)/lint-imports --no-cache  # the import rules of docs/architecture.md (contracts in pyproject.toml)
	$(BIN)/python -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-all: setup
	$(BIN)/python -m pytest -q -m "" $(ARGS)

bench: setup
	$(BIN)/python -m bench $(ARGS)
