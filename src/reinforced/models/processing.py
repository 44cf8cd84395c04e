"""Prompt -> model inputs: the chat template, the tokenizer, and (for VLMs) the processor.

``Adapter(loaded, template)`` is what the rollout engine and the trainer hold. ``encode(prompt)`` renders
the prompt with ``data.templates.to_messages`` and the model's chat template (generation prompt
appended) and tokenizes it; for a VLM the images go through ``models.vision.encode_vlm`` so placeholder
expansion and pixel preprocessing happen once per prompt. ``forward_kwargs`` gives the extra forward
arguments of a padded batch (vision inputs, position ids).

Position ids follow the attention mask, ``position = cumsum(mask) - 1``, so a left-padded prompt sees
the same rotary positions as an unpadded one and the engine's incremental decode and the trainer's
teacher-forced forward agree. Multimodal-RoPE models (Qwen2-VL family) compute their 3-D positions
themselves from the image grid; their decode positions are the text position plus the per-row offset
(``rope_deltas``) the model stores at prefill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reinforced.models.loading import LoadedModel
from reinforced.types import Prompt

# Models whose rotary positions are 3-D (temporal, height, width) and computed by the model itself.
_MROPE_TYPES = ("qwen2_vl", "qwen2_5_vl")


@dataclass(frozen=True)
class EncodedPrompt:
    """One rendered prompt: token ids [S] (image placeholders expanded) and its vision inputs."""

    input_ids: list[int]
    vision: dict[str, torch.Tensor] | None


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, L] of a padded batch: 0 at each row's first real token, 0 on left padding.

    >>> positions_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]))
    tensor([[0, 0, 0, 1, 2],
            [0, 1, 2, 3, 3]])
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _eos_ids(loaded: LoadedModel) -> tuple[int, ...]:
    ids: set[int] = set()
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(int(loaded.tokenizer.eos_token_id))
    gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
    return tuple(sorted(ids))


class Adapter:
    """Renders prompts for one model and batches their vision inputs."""

    def __init__(self, loaded: LoadedModel, template: str) -> None:
        from reinforced.data.templates import TEMPLATES

        TEMPLATES[template]  # fail now, naming the valid templates, rather than at the first prompt
        self.loaded = loaded
        self.template = template
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids: tuple[int, ...] = _eos_ids(loaded)
        if not self.eos_token_ids:
            raise ValueError(f"{loaded.name}: neither the tokenizer nor the generation config defines EOS")
        pad = loaded.tokenizer.pad_token_id
        self.pad_token_id: int = int(pad if pad is not None else self.eos_token_ids[0])
        model_type = getattr(loaded.model.config, "model_type", "")
        self.uses_mrope: bool = model_type in _MROPE_TYPES

    @property
    def model(self) -> Any:
        return self.loaded.model

    def encode(self, prompt: Prompt) -> EncodedPrompt:
        """Token ids of ``prompt`` rendered with the template and the chat template (generation prompt on)."""
        from reinforced.data.templates import to_messages

        messages = to_messages(prompt, self.template)
        if self.loaded.is_vlm:
            from reinforced.models.vision import encode_vlm

            ids, vision = encode_vlm(self.loaded.processor, messages, prompt.images, sample=prompt.prompt_id)
            return EncodedPrompt(input_ids=list(ids), vision=vision)
        if prompt.images:
            raise ValueError(
                f"prompt {prompt.prompt_id!r} has {len(prompt.images)} image(s) but {self.loaded.name!r} is a "
                "text-only model; use a vision-language model or a text task"
            )
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already holds any BOS; adding special tokens again would double it.
        return EncodedPrompt(input_ids=self.tokenizer.encode(text, add_special_tokens=False), vision=None)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Completion text without special tokens (EOS, pad)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def collate_vision(
        self, vision: Sequence[Mapping[str, torch.Tensor] | None], input_ids: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Forward kwargs for the vision inputs of a micro-batch, one entry per row (None: text-only row).

        ``input_ids`` [n, L] lets per-token extras (Qwen2-VL ``mm_token_type_ids``) be rebuilt from the padded
        batch; without it only the collated pixel tensors are returned. Text models and all-None: ``{}``.
        """
        if not self.loaded.is_vlm:
            return {}
        from reinforced.models import vision as vis

        if input_ids is None:
            return {} if all(v is None for v in vision) else dict(vis.collate_vision(list(vision)))
        # Always through the guards: image placeholders in a row that carries no vision inputs must fail.
        return dict(vis.vision_forward_kwargs(self.model.config, input_ids, list(vision)))

    def forward_kwargs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vision: Sequence[Mapping[str, Any] | None],
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """Kwargs of a full (non-incremental) forward of a padded batch [B, L], and the M-RoPE offsets.

        Returns (kwargs with input_ids, attention_mask, position_ids and vision inputs; ``rope_deltas`` [B, 1]
        for M-RoPE models, else None). Decode steps continue from them with ``decode_position_ids``.
        """
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        rows = list(vision) if vision else [None] * input_ids.shape[0]
        kwargs.update(self.collate_vision(rows, input_ids))
        text_positions = positions_from_mask(attention_mask)  # [B, L]
        if not self.uses_mrope:
            kwargs["position_ids"] = text_positions
            return kwargs, None
        if kwargs.get("image_grid_thw") is not None:
            positions, deltas = self.model.model.get_rope_index(
                input_ids,
                mm_token_type_ids=kwargs["mm_token_type_ids"],
                image_grid_thw=kwargs["image_grid_thw"],
                attention_mask=attention_mask,
            )  # [3, B, L], [B, 1]
        else:  # text-only batch: the three axes all follow the text position
            positions = text_positions[None].expand(3, -1, -1)
            deltas = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
        kwargs["position_ids"] = positions
        return kwargs, deltas

    def decode_position_ids(
        self, text_positions: torch.Tensor, rope_deltas: torch.Tensor | None
    ) -> torch.Tensor:
        """Position ids of one new token per row: [B, 1] (or [3, B, 1] for M-RoPE) from text positions [B, 1]."""
        if rope_deltas is None:
            return text_positions
        return (text_positions + rope_deltas)[None].expand(3, -1, -1)
