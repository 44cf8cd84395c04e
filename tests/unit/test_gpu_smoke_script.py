"""bench/gpu_smoke.py: without CUDA it stops at once with a message naming the problem (exit 1, nothing
launched), and the command it would launch is a config ``load_config`` accepts (every key exists)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reinforced.config import load_config

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_smoke.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_fails_clearly_without_cuda(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny-qwen2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "no CUDA GPU is visible" in done.stderr
    assert not any(tmp_path.iterdir())  # stopped before launching anything


@pytest.mark.parametrize(("gpus", "launcher"), [(1, False), (8, True)])
def test_launch_command_is_a_valid_config(tmp_path, gpus, launcher):
    smoke = _module()
    ns = smoke.parse_args(["--model", "tiny-qwen2", "--gpus", str(gpus), "--engine", "builtin", "rollout.top_p=0.9"])
    cmd = smoke.command(ns, str(tmp_path))
    assert ("torch.distributed.run" in cmd) is launcher
    overrides = cmd[cmd.index("train") + 1 : cmd.index("--no-progress")]
    cfg = load_config(None, overrides)
    assert cfg.training.strategy == ("fsdp2" if launcher else "single")
    assert (cfg.rollout.engine, cfg.rollout.top_p, cfg.training.num_prompts) == ("builtin", 0.9, 64)
