# `make demo` and `make test` work on a fresh clone: they create .venv and install everything first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. On a CUDA machine: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo ui test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

DEMO_FLAGS ?=

demo: install
	$(PY) -m trilora demo --output runs/demo $(DEMO_FLAGS)

# The web UI on http://127.0.0.1:7860 over ui-workspace/ (made with the demo's data on first start).
UI_FLAGS ?=
ui: install
	$(PY) -m trilora ui --root ui-workspace $(UI_FLAGS)

lint: install
	$(VENV)/bin/ruff check trilora tests benchmarks scripts
	$(VENV)/bin/ruff format --check trilora tests benchmarks scripts

format: install
	$(VENV)/bin/ruff check --fix trilora tests benchmarks scripts
	$(VENV)/bin/ruff format trilora tests benchmarks scripts

# Two pytest workers with one thread each use two cores fully (torch's own threads in each worker
# would oversubscribe them); TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS)

# The inner loop: everything but the end-to-end runs marked slow (CI runs those too, in `make test`).
test-fast: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

bench: install
	$(PY) benchmarks/train_step.py

clean:
	rm -rf runs .pytest_cache
