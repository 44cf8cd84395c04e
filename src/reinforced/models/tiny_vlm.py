"""Tiny random-weight vision-language models of real architectures, built offline (no hub access).

Each family is the stock Hugging Face model class with a small configuration, a character-level tokenizer
(printable ASCII plus the family's special tokens, ~150 ids) and the family's real processor, saved to a
folder so ``from_pretrained(folder)`` (via ``models.vision.load_vlm``) works like for a downloaded model.

Families (``TINY_VLM_FAMILIES``): ``qwen2_vl``, ``qwen2_5_vl``, ``idefics3`` (SmolVLM-like), ``llava``.
The built-in ``reinforced-tiny-vlm`` is a small Qwen2-VL (64x64 images, 8x8 patches merged 2x2: 16 image
tokens per image) whose warmed weights ship in ``reinforced/assets/tiny-vlm`` (see
``bench/warmup_tiny_vlm.py``).

Why a character vocabulary: PITFALLS.md measured that a 49k-entry vocabulary makes softmax and sampling
dominate a tiny model's step; ~150 ids keep the model itself the cost. The think/answer tags are single
tokens so a formatted answer is a handful of ids.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from reinforced.registry import Registry

BUILTIN_TINY_VLM = "reinforced-tiny-vlm"
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
CHARS = string.printable[:-2]  # printable ASCII, minus \x0b \x0c (never in prompts)
EOS, PAD = "<|im_end|>", "<|endoftext|>"

# One chat template for every family (ChatML), differing only in the text an image item becomes: the
# family's processor then expands that text into its placeholder tokens.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}@IMAGE@"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer(special: list[str]) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one id per printable ASCII character plus ``special`` tokens.

    >>> tok = char_tokenizer(["<image>"])
    >>> ids = tok.encode("<answer>12</answer><image>", add_special_tokens=False)
    >>> len(ids), tok.decode(ids)
    (5, '<answer>12</answer><image>')
    """
    fixed = [PAD, "<|im_start|>", EOS, "<unk>"]
    specials = fixed + [s for s in special if s not in fixed]
    vocab = {tok: i for i, tok in enumerate(specials + list(TAG_TOKENS) + list(CHARS))}
    # BPE with no merges splits any text into characters; unknown characters map to <unk>.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    backend.add_tokens(list(TAG_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=PAD, unk_token="<unk>", bos_token=None
    )


def _chat_template(image_text: str) -> str:
    return _CHAT_TEMPLATE.replace("@IMAGE@", image_text)


def _text_config(tok: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )


def _qwen2_vl(folder: Path, opts: dict[str, Any], v25: bool = False) -> tuple[PreTrainedModel, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from reinforced.models.vision import IMAGE_ONLY_PROCESSORS

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = char_tokenizer(specials)
    hidden, heads, patch, size = opts["hidden"], opts["heads"], opts["patch_size"], opts["image_size"]
    text = _text_config(tok, hidden, opts["layers"], heads)
    half = hidden // heads // 2  # M-RoPE splits each head's rotary half into (t, h, w) sections
    text["rope_scaling"] = {"type": "mrope", "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]}
    vision = dict(
        depth=opts["vision_layers"], hidden_size=hidden, num_heads=opts["vision_heads"],
        patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
    )
    ids = {n: tok.convert_tokens_to_ids(t) for n, t in zip(
        ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"), specials, strict=True)}
    if v25:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision.update(out_hidden_size=hidden, hidden_size=opts["vision_hidden"], intermediate_size=2 * hidden,
                      window_size=2 * patch, fullatt_block_indexes=[opts["vision_layers"] - 1])
        config: Any = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model: PreTrainedModel = Qwen2_5_VLForConditionalGeneration(config)
    else:
        vision.update(embed_dim=opts["vision_hidden"], mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model = Qwen2VLForConditionalGeneration(config)
    pixels = size * size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    chat = _chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    processor_class = IMAGE_ONLY_PROCESSORS["qwen2_5_vl" if v25 else "qwen2_vl"]  # saves the stock files
    return model, processor_class(image_processor, tok, chat_template=chat)


def _idefics3(folder: Path, opts: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = char_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *grid])
    size, patch, scale = opts["image_size"], opts["patch_size"], 2
    vision = dict(hidden_size=opts["vision_hidden"], intermediate_size=2 * opts["vision_hidden"],
                  num_hidden_layers=opts["vision_layers"], num_attention_heads=opts["vision_heads"],
                  image_size=size, patch_size=patch)
    text = _text_config(tok, opts["hidden"], opts["layers"], opts["heads"])
    text["model_type"] = "llama"
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=scale,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True)
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": size}, max_image_size={"longest_edge": size},
    )
    seq_len = (size // patch) ** 2 // scale**2
    return model, Idefics3Processor(image_processor, tok, image_seq_len=seq_len, chat_template=_chat_template("<image>"))


def _llava(folder: Path, opts: dict[str, Any]) -> tuple[PreTrainedModel, Any]:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = char_tokenizer(["<image>"])
    size, patch = opts["image_size"], opts["patch_size"]
    vision = dict(model_type="clip_vision_model", hidden_size=opts["vision_hidden"],
                  intermediate_size=2 * opts["vision_hidden"], num_hidden_layers=opts["vision_layers"],
                  num_attention_heads=opts["vision_heads"], image_size=size, patch_size=patch,
                  projection_dim=opts["vision_hidden"])
    text = _text_config(tok, opts["hidden"], opts["layers"], opts["heads"])
    text["model_type"] = "llama"
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(image_processor, tok, patch_size=patch, vision_feature_select_strategy="default",
                               chat_template=_chat_template("<image>"), num_additional_image_tokens=1)
    return model, processor


Builder = Callable[[Path, dict[str, Any]], tuple[PreTrainedModel, Any]]
TINY_VLM_FAMILIES: Registry[Builder] = Registry("tiny VLM family")
TINY_VLM_FAMILIES.add("qwen2_vl", _qwen2_vl)
TINY_VLM_FAMILIES.add("qwen2_5_vl", lambda folder, opts: _qwen2_vl(folder, opts, v25=True))
TINY_VLM_FAMILIES.add("idefics3", _idefics3)
TINY_VLM_FAMILIES.add("llava", _llava)

DEFAULTS: dict[str, Any] = dict(
    hidden=64, layers=2, heads=4, vision_hidden=32, vision_layers=1, vision_heads=2, image_size=32, patch_size=8
)
# The built-in model: sized so a 2-core CPU can warm it up in minutes (PITFALLS.md) while every image token
# still sees a whole shape (64 px images, 8 px patches merged 2x2: a 4x4 grid of 16 px cells).
BUILTIN_OPTIONS: dict[str, Any] = dict(
    hidden=128, layers=4, heads=4, vision_hidden=64, vision_layers=2, vision_heads=4, image_size=64, patch_size=8
)


def build_tiny_vlm(family: str, folder: str | Path, seed: int = 0, **options: Any) -> Path:
    """Build a random-weight tiny VLM of ``family`` and save model, tokenizer and processor to ``folder``.

    ``options`` override ``DEFAULTS`` (hidden, layers, heads, vision_hidden, vision_layers, vision_heads,
    image_size, patch_size). Same seed, same weights. Returns the folder.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown tiny VLM option(s) {unknown}; valid: {', '.join(sorted(DEFAULTS))}")
    builder = TINY_VLM_FAMILIES[family]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, processor = builder(folder, {**DEFAULTS, **options})
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def builtin_tiny_vlm_path() -> Path:
    """The folder of the shipped, warmed ``reinforced-tiny-vlm`` checkpoint (inside the package)."""
    path = Path(__file__).resolve().parent.parent / "assets" / "tiny-vlm"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{BUILTIN_TINY_VLM}: no checkpoint at {path}; rebuild it with `python bench/warmup_tiny_vlm.py`"
        )
    return path
