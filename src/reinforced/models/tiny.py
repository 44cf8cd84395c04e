"""Tiny text models of real architectures (Qwen2, Llama) with an offline byte-level tokenizer.

They exist so tests and smoke runs exercise the exact code paths of real checkpoints (the same
``transformers`` classes, KV cache, rotary embeddings, grouped-query attention, tied or untied heads)
in milliseconds on a CPU. Weights are random but deterministic given a seed.

The vocabulary is deliberately small: the 256 byte symbols of GPT-2's byte-level alphabet plus the
chat/tag pieces below (~265 tokens). A 49k vocabulary would make every softmax and sampling step over
``[tokens, V]`` tensors dominate the cost (see PITFALLS.md: 10-12 s per step for a 3 M-parameter model);
with ~265 tokens the model itself dominates again. Any text encodes (byte fallback), so prompts with
unicode or digits round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from reinforced.registry import Registry

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
# Non-special pieces the think/answer templates use; one token each keeps tag rewards cheap to learn.
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# ChatML, as SmolLM2 and Qwen2 use; message content may be a string or a list of typed items
# (only text items are rendered: tiny text models have no image placeholders).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    return sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: _byte_of(ch))


def _byte_of(ch: str) -> int:
    # GPT-2 maps printable bytes to themselves and the rest to chr(256 + k) in byte order.
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    code = ord(ch)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with a ChatML chat template, built without files or network.

    >>> tok = build_tiny_tokenizer()
    >>> len(tok) < 300
    True
    >>> ids = tok("<answer>42</answer> é", add_special_tokens=False).input_ids
    >>> tok.decode(ids)
    '<answer>42</answer> é'
    """
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in tok.vocab]})
    tok.add_tokens(list(TAG_TOKENS))
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def _common(tok: PreTrainedTokenizerFast) -> dict[str, object]:
    return {
        "vocab_size": len(tok),  # exact: padded rows would be sampled and could not be decoded
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention, as the real checkpoints use
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": None,
    }


def _qwen2_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return Qwen2Config(**_common(tok), tie_word_embeddings=True, rope_theta=1_000_000.0)


def _llama_config(tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    return LlamaConfig(**_common(tok), tie_word_embeddings=False, rope_theta=10_000.0)


_ConfigFn = Callable[[PreTrainedTokenizerFast], PretrainedConfig]
TINY_TEXT_MODELS: Registry[tuple[_ConfigFn, type[PreTrainedModel]]] = Registry("tiny text model")
TINY_TEXT_MODELS.add("tiny-qwen2", (_qwen2_config, Qwen2ForCausalLM))
TINY_TEXT_MODELS.add("tiny-llama", (_llama_config, LlamaForCausalLM))


def build_tiny(
    name: str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Random-weight model ``name`` (``tiny-qwen2`` | ``tiny-llama``) and its tokenizer.

    Deterministic given ``seed``; the global RNG state is left untouched.

    >>> m1, _ = build_tiny("tiny-llama", seed=3)
    >>> m2, _ = build_tiny("tiny-llama", seed=3)
    >>> all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    True
    """
    config_fn, cls = TINY_TEXT_MODELS[name]
    tok = build_tiny_tokenizer()
    config = config_fn(tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(dtype).eval(), tok
