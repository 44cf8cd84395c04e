"""rollout.engine=vllm without vLLM installed, and its settings: clear errors (the engine itself is tested in
tests/vllm/ by `make test-vllm`)."""

import importlib.util

import pytest

from reinforced.config import ConfigError, load_config
from reinforced.rollout import build_engine


def test_vllm_settings_without_the_vllm_engine_are_an_error():
    with pytest.raises((ConfigError, ValueError), match="rollout.vllm is set but rollout.engine='builtin'"):
        load_config(None, ["rollout.vllm={enforce_eager: true}"])
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.vllm={dtype: bfloat16, cpu_kv_cache_gib: 4}"])
    assert cfg.rollout.vllm.dtype == "bfloat16" and cfg.rollout.vllm.cpu_kv_cache_gib == 4


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_building_the_engine_without_vllm_names_the_install_command():
    from reinforced.config import ModelConfig
    from reinforced.models import load_policy
    from reinforced.models.processing import Adapter

    adapter = Adapter(load_policy(ModelConfig(name_or_path="tiny-qwen2")), "plain")
    with pytest.raises(ImportError, match="make test-vllm"):
        build_engine("vllm", adapter)
