# Two commands do all set-up on a fresh machine:
#   make train   install into .venv, then train on the embedded default data (TensorBoard logs in logs/)
#   make test    install into .venv, then run the fast test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-slow lint tensorboard clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,sweep,mlflow,export]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) scripts/train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src scripts tests
	$(VENV)/bin/ruff format --check src scripts tests

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf logs .pytest_cache .ruff_cache
