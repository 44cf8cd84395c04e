"""Tiny VLM families through models.vision: images reach the logits, rows stay aligned, guards fire."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from reinforced.models.tiny_vlm import TINY_VLM_FAMILIES, build_tiny_vlm, char_tokenizer
from reinforced.models.vision import (
    ImageOnlyQwen2VLProcessor,
    VisionError,
    check_vision,
    collate_vision,
    encode_vlm,
    expand_vision,
    is_vlm_config,
    load_image,
    load_vlm,
    vision_forward_kwargs,
)

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "idefics3", "llava"]
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny_vlm")
    out = {}
    for family in FAMILIES:
        model, processor = load_vlm(build_tiny_vlm(family, root / family, seed=1))
        out[family] = (model.eval(), processor)
    return out


def picture(colour: str, box: tuple[int, int, int, int] = (4, 4, 24, 24)) -> Image.Image:
    image = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    return image


def completion_logprobs(model, processor, rows: list[tuple[list[int], dict | None]], completion: list[int]) -> torch.Tensor:
    """Summed logprob of ``completion`` after each prompt, left-padded in one batch: [n]."""
    pad = processor.tokenizer.pad_token_id
    seqs = [ids + completion for ids, _ in rows]
    length = max(map(len, seqs))
    input_ids = torch.tensor([[pad] * (length - len(s)) + s for s in seqs])
    attention = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in seqs])
    extra = vision_forward_kwargs(model.config, input_ids, [v for _, v in rows])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention, **extra).logits.float()
    k = len(completion)
    logp = logits[:, -k - 1 : -1].log_softmax(-1).gather(-1, input_ids[:, -k:, None])[..., 0]  # [n, k]
    return logp.sum(-1)


def test_registry_names_families() -> None:
    assert TINY_VLM_FAMILIES.names() == sorted(FAMILIES)
    with pytest.raises(KeyError, match="valid: idefics3, llava"):
        TINY_VLM_FAMILIES["qwen3_vl"]
    with pytest.raises(ValueError, match="bogus"):
        build_tiny_vlm("llava", "/nonexistent", bogus=1)


def test_char_tokenizer_roundtrip() -> None:
    tok = char_tokenizer(["<image>"])
    text = "<think>2 circles</think><answer>2</answer>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) == 4 + len("2 circles") + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_images_reach_logits_and_rows_stay_aligned(models: dict, family: str) -> None:
    model, processor = models[family]
    assert is_vlm_config(model.config)
    if family.startswith("qwen"):
        assert isinstance(processor, ImageOnlyQwen2VLProcessor)
    red = encode_vlm(processor, MESSAGES, [picture("red")], "red")
    blue = encode_vlm(processor, MESSAGES, [picture("blue", (10, 2, 30, 30))], "blue")
    text = encode_vlm(processor, [{"role": "user", "content": "How many?"}], [], "text")
    assert text[1] is None
    completion = processor.tokenizer.encode("<answer>3</answer>", add_special_tokens=False)
    alone = torch.stack([completion_logprobs(model, processor, [r], completion)[0] for r in (red, blue, text)])
    assert abs(float(alone[0] - alone[1])) > 1e-5  # different images, different logprobs
    mixed = completion_logprobs(model, processor, [blue, text, red], completion)  # shuffled, text row mixed in
    torch.testing.assert_close(mixed, alone[[1, 2, 0]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_guards_name_the_sample(models: dict, family: str) -> None:
    model, processor = models[family]
    ids, vision = encode_vlm(processor, MESSAGES, [picture("red")], "p7")
    row = torch.tensor([ids])
    check_vision(model.config, row, [vision])  # consistent: no error
    with pytest.raises(VisionError, match="'p7'.*no vision inputs"):
        check_vision(model.config, row, [None], sample_ids=["p7"])
    with pytest.raises(VisionError, match="'p7'.*no vision inputs"):
        vision_forward_kwargs(model.config, row, (), sample_ids=["p7"])  # a batch that lost its vision tuple
    image_id = int(model.config.image_token_id)
    first = ids.index(image_id)
    short = torch.tensor([ids[:first] + ids[first + 1 :]])  # one placeholder fewer than features
    with pytest.raises(VisionError, match="'p7'.*do not match image features"):
        check_vision(model.config, short, [vision], sample_ids=["p7"])
    with pytest.raises(VisionError, match="'p8'.*more images than placeholders: 2 image"):
        encode_vlm(processor, MESSAGES, [picture("red"), picture("blue")], "p8")


def test_unreadable_images_name_the_sample(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(VisionError, match="'row-3'.*cannot read image.*broken.png"):
        load_image(broken, "row-3")
    with pytest.raises(VisionError, match="'row-4'.*missing.png"):
        load_image(tmp_path / "missing.png", "row-4")
    good = tmp_path / "ok.png"
    picture("red").convert("L").save(good)
    assert load_image(good).mode == "RGB"


def test_collate_pads_idefics_images_and_expand_shares() -> None:
    one = {"pixel_values": torch.ones(1, 1, 3, 4, 4), "pixel_attention_mask": torch.ones(1, 1, 4, 4, dtype=torch.bool)}
    two = {"pixel_values": torch.full((1, 2, 3, 4, 4), 2.0),
           "pixel_attention_mask": torch.ones(1, 2, 4, 4, dtype=torch.bool)}
    out = collate_vision([one, None, two])
    assert out["pixel_values"].shape == (3, 2, 3, 4, 4)
    assert out["pixel_values"][1].abs().sum() == 0 and out["pixel_values"][0, 1].abs().sum() == 0
    assert out["pixel_attention_mask"][:, :, 0, 0].tolist() == [[True, False], [False, False], [True, True]]
    llava = collate_vision([{"pixel_values": torch.zeros(1, 3, 4, 4)}, None, {"pixel_values": torch.ones(2, 3, 4, 4)}])
    assert llava["pixel_values"].shape == (3, 3, 4, 4) and collate_vision([None, None]) == {}
    with pytest.raises(VisionError, match="row 1.*differ"):
        collate_vision([one, {"pixel_values": torch.zeros(1, 3, 4, 4)}])
    assert all(v is one for v in expand_vision(one, 4)) and expand_vision(None, 2) == (None, None)
