"""LoRA (and QLoRA-ready) adapters through PEFT: train a low-rank update, keep the base frozen.

LoRA (Hu et al. 2021, arXiv 2106.09685) replaces each chosen linear layer ``W x`` by
``W x + (alpha / r) B A dropout(x)`` with ``A: [r, in]`` random and ``B: [out, r]`` zero, so the adapted model
starts equal to the base and only ``A, B`` train. QLoRA (Dettmers et al. 2023, arXiv 2305.14314) stores the
frozen ``W`` in 4-bit NF4 (or 8-bit) through bitsandbytes, which needs a CUDA GPU.

The adapter layers are injected by PEFT (``get_peft_model``) into the loaded model in place: the trainer, the
rollout engine and ``Adapter`` keep using the Hugging Face model object they always use, so the engine
samples from the adapted model (its bf16 copy copies the adapter too) and no merged weight ever replaces a
base weight. The ``PeftModel`` wrapper is kept beside it (``LoadedModel.peft``) for what PEFT does for us:

- the reference model of a KL term is the base with the adapter disabled (``disabled_adapter``), not a
  second copy of the weights;
- checkpoints hold the adapter only (``adapter_config.json`` + ``adapter_model.safetensors``; PEFT's
  ``save_pretrained``), and ``base_model_name_or_path`` in it names the base as the run config does;
- ``export_merged`` writes a plain Hugging Face folder with ``B A`` merged into a fresh copy of the base.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reinforced.config import LoraConfig, ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
# The attention and MLP projections of Llama / Qwen2 / Mistral / SmolLM2 decoders (the language models of
# Qwen2-VL, Qwen2.5-VL, Idefics3 and LLaVA too).
DEFAULT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Vision encoders of those families name their layers alike (SigLIP's q_proj, Qwen2.5-VL's gate_proj), so
# the default excludes modules under these names; the multimodal projector is no target either.
VISION_KEYS = ("visual.", "vision_tower.", "vision_model.")


def _require_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("model.lora needs PEFT: pip install 'reinforced[lora]' (or pip install peft)") from None
    return peft


def is_adapter_folder(path: Path) -> bool:
    """A folder holding a PEFT adapter (``adapter_config.json``) instead of full weights."""
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def default_target_modules(model: nn.Module) -> list[str]:
    """Full names of the language model's attention/MLP projection layers (vision tower excluded)."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_PROJECTIONS
             and not any(key in name for key in VISION_KEYS)]
    if not names:
        raise ValueError(f"model.lora: no layer named {', '.join(DEFAULT_PROJECTIONS)} outside the vision tower; "
                         "name the layers to adapt in model.lora.target_modules")
    return names


def apply_lora(loaded: Any, cfg: ModelConfig, base_name: str) -> None:
    """Inject fresh LoRA adapters into ``loaded.model`` in place; the base weights stop requiring gradients.

    ``base_name`` is what the adapter's config records as its base (a built-in name or an absolute folder).
    """
    peft = _require_peft()
    lora = cfg.lora
    assert lora is not None
    targets = list(lora.target_modules) if lora.target_modules else default_target_modules(loaded.model)
    peft_cfg = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=targets)
    try:
        loaded.peft = peft.get_peft_model(loaded.model, peft_cfg)
    except ValueError as err:  # PEFT: "Target modules {...} not found in the base model"
        raise ValueError(f"model.lora.target_modules={lora.target_modules!r}: {err}") from None
    loaded.peft.peft_config["default"].base_model_name_or_path = base_name  # what export and eval reload
    in_vision = [n for n, p in loaded.model.named_parameters()
                 if p.requires_grad and any(k in n for k in VISION_KEYS)]
    if cfg.freeze_vision_tower and in_vision:
        raise ValueError(f"model.freeze_vision_tower=true but model.lora.target_modules adapts vision-tower "
                         f"layers ({in_vision[0]}, ...); drop one of the two")


def check_quantization(lora: LoraConfig | None, builtin: bool) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for QLoRA ({} without quantization).

    bitsandbytes kernels run on CUDA only: on a machine without a GPU this is an error before any weight loads.
    """
    if lora is None or lora.quantization == "none":
        return {}
    q = lora.quantization
    if not torch.cuda.is_available():
        raise ValueError(f"model.lora.quantization={q}: QLoRA loads the base through bitsandbytes, which needs a "
                         "CUDA GPU, and none is visible; use model.lora.quantization=none on this machine")
    if builtin:
        raise ValueError(f"model.lora.quantization={q} quantizes weights while loading a Hugging Face folder; "
                         "give model.name_or_path as a folder (built-in tiny models are built, not loaded)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ImportError(f"model.lora.quantization={q} needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if q == "4bit":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}


def prepare_quantized(loaded: Any, lora: LoraConfig | None) -> None:
    """PEFT's k-bit preparation (norms in float32, input gradients for checkpointing) before adapters go in."""
    if lora is not None and lora.quantization != "none":
        _require_peft().prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)


@contextmanager
def disabled_adapter(loaded: Any) -> Iterator[nn.Module]:
    """The base model: ``loaded.model`` with its LoRA layers bypassed for the block (no second copy)."""
    with loaded.peft.disable_adapter():
        yield loaded.model


class AdapterSaver:
    """The adapter as ``checkpoint.save_checkpoint`` sees a model: ``named_parameters`` and ``save_pretrained``.

    ``save_embedding_layers=False``: PEFT's default ("auto") looks the base up on the Hugging Face hub to see
    whether embeddings changed; ours never train (they are no target) and runs stay offline.
    """

    def __init__(self, peft_model: Any) -> None:
        self.peft = peft_model

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.peft.named_parameters()

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        self.peft.save_pretrained(folder, save_embedding_layers=False, **kwargs)


def saveable(loaded: Any) -> Any:
    """What a checkpoint saves: the adapter (PEFT folder) under LoRA, else the full model."""
    return loaded.model if getattr(loaded, "peft", None) is None else AdapterSaver(loaded.peft)


def load_adapter_weights(loaded: Any, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy saved adapter tensors (PEFT key names) into the live adapter; any mismatch is an error."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(loaded.peft, weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    expected = sum(1 for n, _ in loaded.peft.named_parameters() if "lora_" in n)
    if missing or result.unexpected_keys or len(weights) != expected:
        raise ValueError(f"adapter {source} does not match model.lora: missing={missing[:5]} "
                         f"unexpected={list(result.unexpected_keys)[:5]} ({len(weights)} saved, {expected} expected)")


def adapter_base(folder: Path) -> str:
    """The base model an adapter folder was trained on (``base_model_name_or_path``)."""
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    return str(base)


def load_adapted(folder: Path, cfg: ModelConfig) -> Any:
    """The base named in an adapter folder with that adapter attached (eval of a LoRA run's checkpoint)."""
    peft = _require_peft()
    from reinforced.models.loading import load_policy

    base_cfg = cfg.model_copy(update={"name_or_path": adapter_base(folder), "lora": None})
    loaded = load_policy(base_cfg)
    loaded.peft = peft.PeftModel.from_pretrained(loaded.model, str(folder), is_trainable=cfg.lora is not None)
    return loaded


def export_merged(adapter_dir: str | Path, out_dir: str | Path, cfg: ModelConfig | None = None) -> Path:
    """Write ``out_dir``: the base with the adapter of ``adapter_dir`` merged, as a plain Hugging Face folder.

    The base is loaded afresh (the name in the adapter's config), so a live run's weights are never merged
    into; the folder holds config, safetensors and tokenizer / processor, loadable without PEFT.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_folder(adapter_dir):
        raise ValueError(f"{adapter_dir} holds no LoRA adapter ({ADAPTER_CONFIG} without config.json)")
    cfg = (cfg or ModelConfig()).model_copy(update={"lora": None, "gradient_checkpointing": False,
                                                    "name_or_path": adapter_base(adapter_dir)})
    loaded = load_adapted(adapter_dir, cfg)
    merged = loaded.peft.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    (loaded.processor or loaded.tokenizer).save_pretrained(out_dir)
    return out_dir
