# Two commands: `make quickstart` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: quickstart test install lint bench browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of PyTorch first, pinned, so no resolver step can pull a CUDA build.
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev,lora,wandb,mlflow]" $(TORCH)
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/reinforced train tiny_vlm_count_grpo

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15 --ignore=tests/distributed

# Data-parallel training (ddp, fsdp2) in 2 gloo processes of 1 thread each (about 2 minutes).
test-distributed: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -x --durations=5 tests/distributed

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

bench: $(STAMP)
	$(PIP) install --quiet -e ".[bench]" $(TORCH)
	$(PY) bench/compare_trl.py --bf16

# Headless Chromium (Debian's package) for the HTML report's browser test; CI runs as root.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) runs .pytest_cache
