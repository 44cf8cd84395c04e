"""Loading policies (built-in tiny models, local folders), references, and prompt encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reinforced.config import ModelConfig
from reinforced.models import Adapter, ModelNotFoundError, load_policy, load_reference
from reinforced.models.tiny import build_tiny, build_tiny_tokenizer
from reinforced.registry import UnknownNameError
from reinforced.types import Prompt


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_tiny_models_are_real_architectures_with_small_vocab(name: str) -> None:
    loaded = load_policy(ModelConfig(name_or_path=name))
    expected = {"tiny-qwen2": "qwen2", "tiny-llama": "llama"}[name]
    assert loaded.model.config.model_type == expected
    assert loaded.model.config.vocab_size == len(loaded.tokenizer) < 300
    assert not loaded.is_vlm and loaded.processor is None
    assert all(p.requires_grad for p in loaded.model.parameters())
    # a different seed gives different weights, the same seed the same ones
    other, _ = build_tiny(name, seed=1)
    same, _ = build_tiny(name, seed=0)
    ids = [5, 9, 77]
    assert torch.equal(_logits(loaded.model, ids), _logits(same, ids))
    assert not torch.allclose(_logits(loaded.model, ids), _logits(other, ids))


def test_local_folder_round_trip(tmp_path: Path) -> None:
    model, tok = build_tiny("tiny-llama", seed=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_policy(ModelConfig(name_or_path=str(tmp_path)))
    ids = tok("1+2=", add_special_tokens=False).input_ids
    assert torch.allclose(_logits(loaded.model, ids), _logits(model, ids))
    assert loaded.tokenizer.chat_template == tok.chat_template
    assert loaded.name == str(tmp_path)


def test_bfloat16_dtype() -> None:
    loaded = load_policy(ModelConfig(name_or_path="tiny-qwen2", dtype="bfloat16"))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_missing_folder_error_says_how_to_get_a_model(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError) as err:
        load_policy(ModelConfig(name_or_path=str(missing)))
    msg = str(err.value)
    assert str(missing) in msg and "reinforced models pull smollm2-135m-instruct" in msg
    with pytest.raises(ModelNotFoundError, match="did you mean 'tiny-qwen2'"):
        load_policy(ModelConfig(name_or_path="tiny-qwen"))


def test_unpulled_builtin_says_run_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REINFORCED_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="reinforced models pull smollm2-135m-instruct") as err:
        load_policy(ModelConfig(name_or_path="smollm2-135m-instruct"))
    assert str(tmp_path / "models" / "smollm2-135m-instruct") in str(err.value)


def test_folder_without_config_or_chat_template(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_policy(ModelConfig(name_or_path=str(tmp_path / "empty")))
    model, tok = build_tiny("tiny-qwen2")
    tok.chat_template = None
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    (tmp_path / "m" / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no chat template"):
        load_policy(ModelConfig(name_or_path=str(tmp_path / "m")))


def test_reference_is_frozen_independent_copy() -> None:
    loaded = load_policy(ModelConfig(name_or_path="tiny-qwen2"))
    ref = load_reference(loaded)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    ids = [3, 4, 5]
    before = _logits(ref, ids)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.1)
    assert torch.equal(_logits(ref, ids), before)
    assert not torch.allclose(_logits(loaded.model, ids), before)


def test_freeze_vision_tower_on_text_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="text-only"):
        load_policy(ModelConfig(name_or_path="tiny-qwen2", freeze_vision_tower=True))


def test_adapter_encodes_through_template_and_chat_template() -> None:
    loaded = load_policy(ModelConfig(name_or_path="tiny-llama"))
    adapter = Adapter(loaded, "plain")
    enc = adapter.encode(Prompt(prompt_id="a", question="What is 2+3?"))
    tok = build_tiny_tokenizer()
    text = tok.decode(enc.input_ids)
    assert text == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    assert enc.vision is None
    assert adapter.eos_token_ids == (tok.eos_token_id,) and adapter.pad_token_id == tok.pad_token_id
    assert adapter.collate_vision([None, None]) == {}
    # the one-shot think/answer template renders more turns than the plain one
    assert len(Adapter(loaded, "think_answer").encode(Prompt(prompt_id="a", question="q")).input_ids) > 40


def test_adapter_bad_inputs() -> None:
    loaded = load_policy(ModelConfig(name_or_path="tiny-qwen2"))
    with pytest.raises(UnknownNameError, match="think_answer"):
        Adapter(loaded, "think_anwser")
    with pytest.raises(ValueError, match="'img' has 1 image"):
        Adapter(loaded, "plain").encode(Prompt(prompt_id="img", question="q", images=("x.png",)))
