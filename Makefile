# The two commands of the README. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Train the speech8k recipe on the bundled speech for a few minutes, write demo_out/generated.wav
# and print held-out bits per sample beside the bz2 and unigram baselines.
DEMO_RUN := demo_out/run
demo: $(STAMP)
	rm -rf $(DEMO_RUN)  # the demo trains anew each time (train refuses a folder holding another run's checkpoints)
	$(VENV)/bin/wavedil train experiment=speech8k hydra.run.dir=$(DEMO_RUN)
	$(VENV)/bin/wavedil generate $(DEMO_RUN) -o demo_out/generated.wav --seconds 4 --seed 1 --temperature 0.9
	$(VENV)/bin/wavedil eval $(DEMO_RUN) data/speech8k --split valid

# The test suite (tiny models; about 6 minutes on 2 CPU cores, plus the first install).
test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/generation.py

clean:
	rm -rf demo_out outputs multirun
