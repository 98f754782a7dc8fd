# SAMPrompt developer commands. Everything runs inside .venv, created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samprompt-setup

.PHONY: setup test demo bench clean-venv

setup: $(STAMP)

# Re-run the set-up only when it or the package's declared dependencies change.
$(STAMP): tools/setup_env.sh setup.py
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

# Synthetic IWP data (generated once), a small SAM trained on the CPU, COCO AP against the
# filled-prompt-box baseline, overlays in output/demo/overlays.
demo: $(STAMP)
	$(PY) tools/demo.py

bench: $(STAMP)
	$(PY) benchmarks/train_memory.py

clean-venv:
	rm -rf $(VENV)
