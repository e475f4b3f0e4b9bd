# Two commands do all set-up on a fresh machine:
#   make train   install into .venv, then train on the embedded default data (TensorBoard logs in logs/)
#   make test    install into .venv, then run the fast test suite
#   make test-min   the fast test suite in .venv-min with every dependency at its declared minimum
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-slow test-min lint tensorboard results clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,sweep,mlflow,export,jpeg]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) scripts/train.py $(ARGS)

# the suite runs on every core (pytest-xdist; each worker takes its share of the compute threads)
WORKERS ?= auto

test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) -m slow $(ARGS)

# The lower bounds of pyproject.toml, proven: a separate venv pinned by constraints-min.txt
VENV_MIN ?= .venv-min
STAMP_MIN := $(VENV_MIN)/.installed

$(STAMP_MIN): pyproject.toml constraints-min.txt
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_MIN)/bin/python -m pip install --quiet -c constraints-min.txt -e '.[dev,sweep,mlflow,export,jpeg]'
	touch $(STAMP_MIN)

test-min: $(STAMP_MIN)
	$(VENV_MIN)/bin/python -m pip list --format=freeze | grep -iE '^(torch|torchvision|timm|pytorch-lightning|hydra-core|numpy)=='
	$(VENV_MIN)/bin/python -m pytest -n $(WORKERS) $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src scripts tests benchmarks experiments
	$(VENV)/bin/ruff format --check src scripts tests benchmarks experiments
	$(VENV)/bin/mypy

# every generated table in README.md, experiments/*/README.md and docs/*.md, from the committed result files
results: $(STAMP)
	$(PY) experiments/update_tables.py
	$(PY) experiments/robustness/plot.py

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf logs .pytest_cache .ruff_cache
