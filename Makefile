# MER — `make demo` runs the main job end to end; `make test` runs the tests.
# Both create .venv when missing and install torch first (TORCH_SPEC overrides it, e.g. a CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out
STAMP := $(VENV)/.mer-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml mer_dataset_builder/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]" -e "./mer_dataset_builder[dev]"
	touch $(STAMP)

demo: install
	$(PY) -m mer.cli.demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO_OUT) runs
