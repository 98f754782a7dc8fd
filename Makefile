# SAMPrompt developer commands. Everything runs inside .venv, created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samprompt-setup

.PHONY: setup test test-fast format demo pretrain bench clean-venv

setup: $(STAMP)

# Re-run the set-up only when it or the package's declared dependencies change.
$(STAMP): tools/setup_env.sh setup.py
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

# Every test. `make test-fast` skips those marked slow (long training, whole tools end to end).
test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

# black + isort at 100 columns (pyproject.toml); installs the formatters into .venv when missing.
format: $(STAMP)
	$(PY) -m black --version >/dev/null 2>&1 || $(PY) -m pip install -q black isort
	$(PY) -m isort projects tools tests benchmarks
	$(PY) -m black projects tools tests benchmarks

# Synthetic IWP data (generated once), a small SAM trained on the CPU, COCO AP against the
# filled-prompt-box baseline, overlays in output/demo/overlays.
demo: $(STAMP)
	$(PY) tools/demo.py

# The small SAM of sam_small_cpu.yaml pretrained on varied synthetic tiles (generated once in
# data/iwp_synthetic_realistic), ~15 minutes on 2 cores: output/pretrain/model_final.pth.
# An interrupted run resumes; a finished one is kept.
pretrain: $(STAMP)
	$(PY) tools/train_net.py --config-file projects/SAMPrompt/configs/sam_small_pretrain.yaml --resume

bench: $(STAMP)
	$(PY) benchmarks/train_memory.py

clean-venv:
	rm -rf $(VENV)
