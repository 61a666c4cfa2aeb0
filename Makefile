# make demo: set up .venv and train + evaluate the embedded default (synthetic data, tiny CLIPSeg, CPU).
# make test: set up .venv and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint bench doctor

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) train.py                                   # trains, then scores the test split at original size
	$(PY) evaluate.py --checkpoint last --swap-prompts   # control: prompts naming another object
	$(PY) -m vlsm.figures --checkpoint last              # showcase.png: ground truth | right prompt | another object's

test: $(STAMP)
	$(PY) -m pytest -q tests

doctor: $(STAMP)
	$(PY) -m models.doctor

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench.py
