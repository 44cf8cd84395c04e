"""Checkpoints: HF-format weights + optimiser + scheduler + sampler + RNG + step, written atomically.

Layout: ``<run>/checkpoints/step-N/`` holding ``model/`` (save_pretrained: safetensors, config, tokenizer /
processor), ``trainer_state.pt`` (optimisers, schedulers, sampler state, RNG states, step) and, for
value-based runs, ``critic.pt``. A checkpoint is written to ``step-N.tmp`` and renamed, so a crash never
leaves a half-written checkpoint that resume would pick up.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    processing: Any,
    state: dict[str, Any],
    critic: torch.nn.Module | None = None,
    keep: int = 2,
) -> Path:
    """Write step ``step`` atomically and keep only the ``keep`` most recent checkpoints."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model", safe_serialization=True)
    if processing is not None:
        processing.save_pretrained(tmp / "model")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    if critic is not None:
        torch.save(critic.state_dict(), tmp / "critic.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp")
            and (p / "trainer_state.pt").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "trainer_state.pt", weights_only=False)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy the checkpoint's weights into an already-built model (same architecture)."""
    from safetensors.torch import load_file

    files = sorted((path / "model").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path / 'model'}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings are saved once; anything else missing means a different architecture.
    missing = [m for m in missing if "lm_head" not in m]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing={missing[:5]} "
                           f"unexpected={unexpected[:5]}")
