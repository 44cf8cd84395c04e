"""Shared fixtures of the vLLM tests (``make test-vllm``, run in .venv-vllm).

vLLM's CPU attention needs head_dim >= 32, so these tiny models use 2 heads of 32 (the default suite's tiny
models use 16). Each is saved as a local Hugging Face folder, the way a user points ``model.name_or_path``.
"""

import importlib.util
import os

import pytest

# `make test` (.venv, no vLLM) does not collect these; `make test-vllm` runs them in .venv-vllm.
collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["test_*.py"]

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def build_model(kind: str, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from reinforced.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                  rms_norm_eps=1e-6, initializer_range=0.2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  bos_token_id=None)
    if kind == "qwen2":  # tied embeddings, as Qwen2-0.5B and SmolLM2 have
        config, cls = Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1_000_000.0), Qwen2ForCausalLM
    else:
        config, cls = LlamaConfig(**common, tie_word_embeddings=False, rope_theta=10_000.0), LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """{"qwen2": folder, "llama": folder} of saved tiny models with head_dim 32."""
    out = {}
    for kind in ("qwen2", "llama"):
        model, tok = build_model(kind)
        path = tmp_path_factory.mktemp(f"tiny-{kind}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[kind] = str(path)
    return out


def engines(path, dtype="float32", template="plain", **settings):
    """(vLLM engine, built-in engine) on the policy loaded from ``path``; the vLLM engine's dtype is ``dtype``."""
    from reinforced.config import ModelConfig, VLLMConfig
    from reinforced.models import load_policy
    from reinforced.models.processing import Adapter
    from reinforced.rollout.sampler import BuiltinEngine
    from reinforced.rollout.vllm_engine import VLLMEngine

    adapter = Adapter(load_policy(ModelConfig(name_or_path=str(path))), template)
    vllm_engine = VLLMEngine(adapter, settings=VLLMConfig(dtype=dtype, enforce_eager=True, **settings))
    return vllm_engine, BuiltinEngine(adapter)


def prompts(n=3):
    from reinforced.types import Prompt

    return [Prompt(prompt_id=f"p{i}", question=f"What is {i} + {2 * i}? Think, then answer.") for i in range(n)]


@pytest.fixture(scope="session")
def h():
    """The helpers above (conftest is not importable under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(build_model=build_model, engines=engines, prompts=prompts)
