"""Checkpoints: HF-format weights + optimiser + scheduler + sampler + RNG + step, written to survive faults.

Layout: ``<run>/checkpoints/step-N/`` holding ``model/`` (save_pretrained: safetensors, config, tokenizer /
processor), ``trainer_state.pt`` (optimisers, schedulers, sampler state, RNG states, step), for value-based
runs ``critic.pt``, and ``manifest.json`` (every file and its size), written last. ``model/`` holds only stock
Hugging Face files (``models.vision`` saves the Qwen2-VL processors under their stock names), so it loads
with plain transformers; ``export_run`` copies the newest one to ``<run>/export/`` at the end of ``fit``.

Fault policy:
- A checkpoint is written to ``step-N.tmp``, every file fsynced, the manifest written, then renamed: a crash
  or SIGKILL never leaves a folder that resume would take for complete (no manifest, no checkpoint).
- A failed write (disk full) removes the ``.tmp`` folder and raises ``CheckpointError`` saying why.
- Non-finite weights are never saved (they would make every later resume diverge or crash).
- Loading checks sizes against the manifest and reads every file before anything is applied, so a
  truncated or broken file raises ``CheckpointError`` naming that file and the caller can fall back to
  the previous checkpoint.
- Weights are loaded through the same key conversion transformers applies when saving (vision-language
  models save ``visual.*`` but hold ``model.visual.*``), so resume works for every family.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of parameters holding NaN or inf."""
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    processing: Any,
    state: dict[str, Any],
    critic: torch.nn.Module | None = None,
    keep: int = 2,
) -> Path:
    """Write step ``step`` (fsync, manifest last, rename) and keep only the ``keep`` most recent checkpoints."""
    bad = non_finite_parameters(model) + (non_finite_parameters(critic) if critic is not None else [])
    if bad:
        raise CheckpointError(f"refusing to save step {step}: non-finite weights in {bad[:5]} "
                              f"(the previous checkpoint stays the latest)")
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        if processing is not None:
            processing.save_pretrained(tmp / "model")
        torch.save({"rng": rng_state(), **state, "step": step}, tmp / "trainer_state.pt")
        if critic is not None:
            torch.save(critic.state_dict(), tmp / "critic.pt")
        _write_manifest(tmp, step)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        why = "disk full" if err.errno == errno.ENOSPC else "write failed"
        raise CheckpointError(f"could not save checkpoint {final} ({why}: {err}); the partial folder was "
                              f"removed and the previous checkpoint stays the latest") from err
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _fsync(final.parent)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(folder: Path, step: int) -> None:
    """fsync every file, then write the manifest (file -> size): its presence marks the checkpoint complete."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for f in files:
        _fsync(f)
    for d in {f.parent for f in files}:
        _fsync(d)
    manifest = {"step": step, "files": {str(f.relative_to(folder)): f.stat().st_size for f in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync(folder / MANIFEST)
    _fsync(folder)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (manifest present), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp") and (p / MANIFEST).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


@dataclass
class Loaded:
    """Everything read from one checkpoint, before any of it is applied."""

    path: Path
    state: dict[str, Any]  # trainer_state.pt
    weights: dict[str, torch.Tensor]  # saved (hub) key names
    critic: dict[str, torch.Tensor] | None


def read_checkpoint(path: Path) -> Loaded:
    """Read and check every file of the checkpoint at ``path``; ``CheckpointError`` names a bad file."""
    from safetensors.torch import load_file

    manifest = json.loads((path / MANIFEST).read_text())
    for name, size in manifest["files"].items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            actual = f.stat().st_size if f.is_file() else "missing"
            raise CheckpointError(f"{f}: size {actual}, the manifest says {size} bytes (truncated or replaced)")
    files = sorted((path / "model").glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors weights in {path / 'model'}")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(_read(f, lambda f: load_file(str(f))))
    state = _read(path / "trainer_state.pt", lambda f: torch.load(f, weights_only=False))
    critic_file = path / "critic.pt"
    critic = _read(critic_file, lambda f: torch.load(f, weights_only=True)) if critic_file.exists() else None
    return Loaded(path, state, weights, critic)


def _read(f: Path, reader: Any) -> Any:
    try:
        return reader(f)
    except Exception as err:  # safetensors, pickle and zip readers each raise their own types
        raise CheckpointError(f"{f} is unreadable: {type(err).__name__}: {err}") from err


def saved_key_names(model: torch.nn.Module) -> dict[str, str]:
    """Saved (hub) parameter name -> the model's own name, from the conversion ``save_pretrained`` applies.

    The model's state dict is passed through transformers' save-time conversion; renamed entries are the
    same tensor objects, so identity links each saved name back to the model's name.
    """
    from transformers.core_model_loading import revert_weight_conversion

    own = model.state_dict()
    by_id = {id(t): k for k, t in own.items()}
    saved = revert_weight_conversion(model, dict(own))
    return {k: by_id.get(id(t), k) for k, t in saved.items()}


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy saved weights into an already-built model of the same architecture."""
    names = saved_key_names(model)
    state = {names.get(k, k): v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings are saved once; anything else missing means a different architecture.
    missing = [m for m in missing if "lm_head" not in m]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {source} does not match the model: missing={missing[:5]} "
                              f"unexpected={unexpected[:5]}")


def export_run(run_dir: Path, out: Path | None = None) -> Path:
    """Copy the newest checkpoint's ``model/`` folder (weights, config, generation config, tokenizer /
    processor: stock Hugging Face files only) to ``out`` (default ``<run>/export``) for plain transformers.

    Written to ``<out>.tmp`` then renamed, so ``out`` is never half-written; a previous export there is
    replaced, any other non-empty folder is an error.
    """
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to export (expected {run_dir / 'checkpoints'})")
    out = Path(out) if out is not None else run_dir / "export"
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise CheckpointError(f"{out} exists and is not a model folder; choose an empty or new --out folder")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from reinforced.models import lora

        if lora.is_adapter_folder(latest / "model"):  # a LoRA run: a fresh base with the adapter merged in
            lora.export_merged(latest / "model", tmp)
        else:
            shutil.copytree(latest / "model", tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not export {latest} to {out}: {err}") from err
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
