"""Policy and reference models: from a local Hugging Face folder or a built-in name.

A policy is any causal LM folder (``AutoModelForCausalLM`` + a tokenizer with a chat template) or any
vision-language model folder (``AutoModelForImageTextToText`` + its processor, through
``models.vision``). Built-in names (``BUILTIN_MODELS``) resolve to the GGUF-imported SmolLM2 cache
folder (``reinforced models pull smollm2-135m-instruct``), the tiny random text models of ``models.tiny``
and the shipped tiny VLM. The reference model of a KL term is a frozen copy of the initial policy.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from reinforced.config import ModelConfig
from reinforced.registry import Registry, did_you_mean

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Parameter-name pieces of vision encoders across families (Qwen2-VL "visual", LLaVA "vision_tower",
# Idefics3 "vision_model"); the projector/connector stays trainable.
_VISION_TOWER_KEYS = ("visual.", "vision_tower.", "vision_model.")


class ModelNotFoundError(FileNotFoundError):
    """A model name or folder that does not resolve; the message says how to get one."""


@dataclass
class LoadedModel:
    """A policy ready for rollout and training.

    ``tokenizer`` is always the text tokenizer (for a VLM: ``processor.tokenizer``); ``processor`` is None
    for text-only models.
    """

    model: PreTrainedModel
    tokenizer: Any
    processor: Any | None
    is_vlm: bool
    name: str
    peft: Any | None = None  # the PeftModel wrapping ``model`` when LoRA adapters are in it (models.lora)


BuiltinLoader = Callable[[ModelConfig], LoadedModel]
BUILTIN_MODELS: Registry[BuiltinLoader] = Registry("built-in model")


def _load_pulled(name: str) -> BuiltinLoader:
    def load(cfg: ModelConfig) -> LoadedModel:
        from reinforced.models.hub import model_dir

        folder = model_dir(name)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {name!r} is not downloaded yet (expected it in {folder}); "
                f"run `reinforced models pull {name}` once, then train again"
            )
        return load_folder(folder, _DTYPES[cfg.dtype], name=name)

    return load


def _load_tiny(name: str) -> BuiltinLoader:
    def load(cfg: ModelConfig) -> LoadedModel:
        from reinforced.models.tiny import build_tiny

        model, tok = build_tiny(name, seed=0, dtype=_DTYPES[cfg.dtype])
        return LoadedModel(model=model, tokenizer=tok, processor=None, is_vlm=False, name=name)

    return load


def _load_tiny_vlm(cfg: ModelConfig) -> LoadedModel:
    from reinforced.models.tiny_vlm import BUILTIN_TINY_VLM, builtin_tiny_vlm_path

    return load_folder(builtin_tiny_vlm_path(), _DTYPES[cfg.dtype], name=BUILTIN_TINY_VLM)


BUILTIN_MODELS.add("smollm2-135m-instruct", _load_pulled("smollm2-135m-instruct"))
BUILTIN_MODELS.add("tiny-qwen2", _load_tiny("tiny-qwen2"))
BUILTIN_MODELS.add("tiny-llama", _load_tiny("tiny-llama"))
BUILTIN_MODELS.add("reinforced-tiny-vlm", _load_tiny_vlm)


def load_folder(path: str | Path, dtype: torch.dtype = torch.float32, name: str | None = None,
                **load_kwargs: Any) -> LoadedModel:
    """Load a causal LM or a VLM saved with ``save_pretrained`` in ``path``.

    The kind is read from ``config.json`` (a ``vision_config`` makes it a VLM). A tokenizer without a
    chat template is an error: prompts are always rendered through the template.
    """
    from reinforced.models import vision

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"{path} holds no config.json: not a Hugging Face model folder")
    config = json.loads(config_file.read_text())
    if vision.is_vlm_config(config):
        model, processor = vision.load_vlm(path, dtype=dtype, **load_kwargs)
        tokenizer, template = processor.tokenizer, getattr(processor, "chat_template", None)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **load_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        processor, template = None, tokenizer.chat_template
    if not template:
        raise ValueError(
            f"{path}: the tokenizer has no chat template; add one (tokenizer_config.json 'chat_template' "
            "or chat_template.jinja) so prompts can be rendered"
        )
    if tokenizer.pad_token_id is None:  # left padding needs a pad id; it is always masked out
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model.eval(), tokenizer, processor, processor is not None, name or str(path))


def load_policy(cfg: ModelConfig) -> LoadedModel:
    """The trainable policy named by ``cfg.name_or_path`` (a built-in name or a local folder).

    Raises ``ModelNotFoundError`` naming the path and how to get a model when nothing resolves.
    """
    from reinforced.models import lora

    name = cfg.name_or_path
    quantize = lora.check_quantization(cfg.lora, builtin=name in BUILTIN_MODELS)  # CPU: an error before loading
    if name in BUILTIN_MODELS:
        loaded = BUILTIN_MODELS[name](cfg)
    elif lora.is_adapter_folder(Path(name).expanduser()):  # a LoRA run's checkpoint: its base + the adapter
        return lora.load_adapted(Path(name).expanduser(), cfg)
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model {name!r} not found: {path.resolve()} is not a folder and {name!r} is not a built-in "
                f"name;{did_you_mean(name, BUILTIN_MODELS.names())} built-ins: "
                f"{', '.join(BUILTIN_MODELS.names())}. Pass a local Hugging Face folder (config.json, "
                "weights, tokenizer with a chat template) or run `reinforced models pull smollm2-135m-instruct`"
            )
        loaded = load_folder(path, _DTYPES[cfg.dtype], **quantize)
    _prepare_for_training(loaded, cfg)
    if cfg.lora is not None:
        lora.prepare_quantized(loaded, cfg.lora)
        lora.apply_lora(loaded, cfg, name if name in BUILTIN_MODELS else str(Path(name).expanduser().resolve()))
    return loaded


def _prepare_for_training(loaded: LoadedModel, cfg: ModelConfig) -> None:
    model = loaded.model
    model.requires_grad_(True)
    if cfg.freeze_vision_tower:
        if not loaded.is_vlm:
            raise ValueError(f"model.freeze_vision_tower=true but {loaded.name!r} is a text-only model")
        for pname, param in model.named_parameters():
            if any(key in pname for key in _VISION_TOWER_KEYS):
                param.requires_grad_(False)


def load_reference(loaded: LoadedModel) -> PreTrainedModel:
    """A frozen copy of the policy as it is now (call before training): eval mode, no gradients."""
    ref = copy.deepcopy(loaded.model)
    if getattr(ref, "supports_gradient_checkpointing", False):
        # transformers >= 5 renamed it; fall back for older versions
        getattr(
            ref, "activation_checkpointing_disable", ref.gradient_checkpointing_disable
        )()  # no backward through the reference: recomputation is waste
    ref.requires_grad_(False)
    return ref.eval()
