# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   creates .venv, installs moelearn, simulates, fits, prints, plots
#   make test   the default test suite (< 10 minutes on 2 cores)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow test-torch bench bench-real bench-scores bench-stream accuracy figures figures-quick peers lint clean

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

# PyTorch inputs (tests/test_torch.py), with the CPU build of torch 2.13.0 (on
# this project's machines pip takes it from local disk; elsewhere it downloads).
test-torch: $(STAMP)
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python -m pytest tests/test_torch.py

# Speed and memory: ratios to one pass over the data, measured side by side.
# Tables in benchmarks/results/, summarised in docs/performance.md (about 25 minutes:
# the explicit d^3 tensor at d=200 alone takes 18).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_fit.py --out benchmarks/results/fit.md
	$(BIN)/python benchmarks/bench_dask.py --out benchmarks/results/dask.md
	$(BIN)/python benchmarks/bench_explicit.py --out benchmarks/results/explicit.md
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python benchmarks/bench_torch.py --out benchmarks/results/torch.md

# Real tables against EMMoE, cgmm and R flexmix (flexmix rows need Rscript with
# r-cran-flexmix; best of 5 flexmix starts on 22 524 rows takes minutes per k).
bench-real: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_real.py --out benchmarks/results/real.md
	$(BIN)/python benchmarks/bench_floor.py --out benchmarks/results/floor.md
	$(BIN)/python benchmarks/bench_spikes.py --out benchmarks/results/spikes.md
	$(BIN)/python benchmarks/bench_seeds.py --out benchmarks/results/seeds.md

# Method 1 with the inputs' own scores (issue 19): Gaussian against mixture scores
# on clustered, skewed and heavy-tailed inputs and on the real tables (about 15
# minutes; the real tables need the bench extra).
bench-scores: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_scores.py --out benchmarks/results/scores.md

# A streamed fit of an 8 GB Parquet file (n=2e7, d=50; needs 18 GB of free disk
# in SCRATCH, about 4 minutes): peak RSS against the 2 GB target.
SCRATCH ?= /tmp
bench-stream: $(STAMP)
	$(BIN)/python benchmarks/bench_stream.py --folder $(SCRATCH) --out benchmarks/results/stream.md

# Accuracy sweeps: Method 1 over 20 seeds, Method 2 over 50 trials, the model
# family (ReLU, tanh, k=3, HME, choosing k) over 10 seeds (about 15 minutes).
accuracy: $(STAMP)
	$(BIN)/python benchmarks/bench_accuracy.py --out benchmarks/results/accuracy.md
	$(BIN)/python benchmarks/bench_method2.py --out benchmarks/results/method2.md
	$(BIN)/python benchmarks/bench_family.py --out benchmarks/results/family.md

# The papers' experiments, full settings, into docs/figures (about 30 minutes).
figures: $(STAMP)
	$(BIN)/moelearn reproduce all --out-dir docs/figures

# The same at reduced settings (under 10 minutes), into results/.
figures-quick: $(STAMP)
	$(BIN)/moelearn reproduce all --quick --out-dir results

# Side by side with R's flexmix and mixtools (needs Rscript; skipped without it).
peers: $(STAMP)
	$(BIN)/python benchmarks/peers/run_peers.py --out benchmarks/results/peers.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo_output .pytest_cache
