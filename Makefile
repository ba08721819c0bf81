# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   creates .venv, installs moelearn, simulates, fits, prints, plots
#   make test   the default test suite (< 10 minutes on 2 cores)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow bench accuracy lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moelearn demo --out-dir demo_output

test: $(STAMP)
	$(BIN)/python -m pytest

# Statistical checks at large n (acceptance-scale fits); bounded, run by CI separately.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Speed and memory: ratios to one pass over the data, measured side by side.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_fit.py --out benchmarks/results/fit.md

# The issue's accuracy sweep over 20 seeds (several minutes).
accuracy: $(STAMP)
	$(BIN)/python benchmarks/bench_accuracy.py --out benchmarks/results/accuracy.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache
