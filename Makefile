# make demo: set up .venv and train + evaluate the embedded default (synthetic data, tiny CLIPSeg, CPU).
# make test: set up .venv (with the app's extra) and run the test suite.
# make app: the prompt explorer in the browser on the last run (RUN=folder for another).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup lint bench doctor app
APP_STAMP := $(VENV)/.installed-app

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

# the app's extra (Gradio, Playwright): not part of make demo; --no-deps, see requirements-app.txt
$(APP_STAMP): requirements-app.txt $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-app.txt
	touch $(APP_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) train.py                                   # trains, then scores the test split at original size
	$(PY) evaluate.py --checkpoint last --swap-prompts   # control: prompts naming another object
	$(PY) -m vlsm.figures --checkpoint last              # showcase.png: ground truth | right prompt | another object's

test: $(STAMP) $(APP_STAMP)
	$(PY) -m pytest -q -rs tests

app: $(APP_STAMP)                                    # the prompt explorer on 127.0.0.1:7860 (docs/app.md)
	$(PY) app.py --checkpoint $(or $(RUN),last)

doctor: $(STAMP)
	$(PY) -m models.doctor

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench.py
