"""Vision-language models: the one place that knows VLM processors and how their outputs are batched.

Public API (the models / rollout / training code calls only these):

    is_vlm_config(config) -> bool
    load_vlm(path, dtype=torch.float32) -> (model, processor)
    load_processor(path) -> processor                      # stock files; Qwen2-VL without torchvision: image-only
    load_image(image, sample="?") -> PIL.Image.Image (RGB)  # ImageError naming the sample
    encode_vlm(processor, messages, images, sample="?", add_generation_prompt=True)
        -> (input_ids: list[int], vision: dict[str, Tensor] | None)     # ONE prompt
    collate_vision(vision: Sequence[dict | None], sample_ids=None) -> dict[str, Tensor]   # micro-batch
    expand_vision(vision: dict | None, n) -> tuple[dict | None, ...]   # a prompt's vision for its G samples
    vision_forward_kwargs(config, input_ids[n, L], vision, sample_ids=None) -> dict[str, Tensor]
        # collate_vision + guards + per-token extras (Qwen2-VL mm_token_type_ids): pass as **kwargs to forward
    check_vision(config, input_ids[n, L], vision, sample_ids=None) -> None   # the guards alone
    image_token_id(config) -> int | None

Per-sample ``vision`` dicts hold what the processor returns for one prompt, minus ``input_ids`` /
``attention_mask`` / ``mm_token_type_ids`` (token-aligned fields are rebuilt from the padded batch):

    Qwen2-VL / Qwen2.5-VL   pixel_values [num_patches, C*t*p*p], image_grid_thw [num_images, 3]
    Idefics3 (SmolVLM)      pixel_values [1, num_images, C, H, W], pixel_attention_mask [1, num_images, H, W]
    LLaVA (and Gemma 3)     pixel_values [num_images, C, H, W]

Batching rule (why it is safe): every family consumes image features in batch order and scatters them onto
the image placeholder tokens row by row, so concatenating per-sample tensors in row order keeps images with
their samples under any shuffle or split; text-only rows contribute nothing (Idefics3: all-zero padding
images, which the model drops). Guards raise ``VisionError`` naming the sample: a VLM row with placeholder
tokens but no vision inputs, placeholder count != feature count, more images than placeholders, and an
unreadable image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, PretrainedConfig, PreTrainedModel
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from reinforced.types import ImageLike


class VisionError(ValueError):
    """A VLM input problem, with a message naming the sample (prompt id or batch row)."""


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video modality, used in memory only; it SAVES the stock files.

    Without torchvision, transformers cannot build the stock processor's video processor and
    ``AutoProcessor.from_pretrained`` silently returns the bare tokenizer (PITFALLS.md); images need no
    video processor, so this subclass declares only ``image_processor`` and ``tokenizer``.

    Saved files name only stock classes (``STOCK_CLASS``, ``Qwen2VLVideoProcessor``) so a checkpoint is
    portable: with torchvision, plain ``AutoProcessor.from_pretrained`` rebuilds the stock processor (the
    video processor's settings mirror the image processor's); without it, ``load_processor`` builds this
    class from the same files. The workaround lives in loading code, never in the saved files.
    """

    STOCK_CLASS = "Qwen2VLProcessor"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        # kwargs: the stock files' ``video_processor`` entry, which this image-only class does not build
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        super(Qwen2VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)

    def to_dict(self) -> dict[str, Any]:
        """``processor_config.json`` as the stock processor writes it (its class, a video processor entry)."""
        out = super().to_dict()
        out["processor_class"] = self.STOCK_CLASS
        image = out.get("image_processor", {})
        out["video_processor"] = {k: image[k] for k in _VIDEO_KEYS if k in image} | {
            "video_processor_type": "Qwen2VLVideoProcessor"}
        return out

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        """Save, then name the stock processor class in ``tokenizer_config.json`` as well."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        tok_file = Path(save_directory) / "tokenizer_config.json"
        if tok_file.is_file():
            tok_config = json.loads(tok_file.read_text())
            if "processor_class" in tok_config:
                tok_config["processor_class"] = self.STOCK_CLASS
                tok_file.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
        self.tokenizer.init_kwargs["processor_class"] = self.STOCK_CLASS
        return result


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyQwen2VLProcessor):
    """The image-only processor of Qwen2.5-VL (same inputs as Qwen2-VL; saves as ``Qwen2_5_VLProcessor``)."""

    STOCK_CLASS = "Qwen2_5_VLProcessor"


# Image processor settings the stock Qwen2-VL video processor shares (frames are resized and patched alike).
_VIDEO_KEYS = ("do_convert_rgb", "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize",
               "image_mean", "image_std", "patch_size", "temporal_patch_size", "merge_size")
IMAGE_ONLY_PROCESSORS = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor}


# Token-aligned processor outputs: rebuilt from the padded batch, never stored per sample.
_TOKEN_FIELDS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def is_vlm_config(config: PretrainedConfig | Mapping[str, Any]) -> bool:
    """True for a vision-language model config (it has a vision tower config).

    >>> is_vlm_config({"model_type": "qwen2_vl", "vision_config": {}}), is_vlm_config({"model_type": "qwen2"})
    (True, False)
    """
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    return get("vision_config") is not None


def image_token_id(config: PretrainedConfig) -> int | None:
    """The id of the image placeholder token the model replaces with image features (None: text model)."""
    value = getattr(config, "image_token_id", None)
    if value is None:
        value = getattr(config, "image_token_index", None)
    return None if value is None else int(value)


def load_processor(path: str | os.PathLike[str]) -> Any:
    """The processor saved in ``path`` (stock files): ``AutoProcessor``, except Qwen2-VL / Qwen2.5-VL without
    torchvision, which get the image-only processor built from the same files (``ImageOnlyQwen2VLProcessor``)."""
    config = json.loads((Path(path) / "config.json").read_text())
    image_only = IMAGE_ONLY_PROCESSORS.get(config.get("model_type"))
    if image_only is not None and not is_torchvision_available():
        return image_only.from_pretrained(path)  # the stock files, built without the video processor
    processor = AutoProcessor.from_pretrained(path)
    if not hasattr(processor, "image_processor"):
        raise VisionError(f"{path}: AutoProcessor returned {type(processor).__name__} with no image processor")
    return processor


def load_vlm(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32, **load_kwargs: Any
             ) -> tuple[PreTrainedModel, Any]:
    """Load a VLM (``AutoModelForImageTextToText``) and its processor from a local folder.

    ``load_kwargs`` go to ``from_pretrained`` (QLoRA's quantization_config and device_map)."""
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **load_kwargs)
    return model, load_processor(path)


def load_image(image: ImageLike, sample: str = "?") -> Image.Image:
    """An RGB PIL image from a path or a PIL image; ``VisionError`` naming the sample when unreadable."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if not isinstance(image, (str, os.PathLike)):
        raise VisionError(f"sample {sample!r}: image must be a path or a PIL image, got {type(image).__name__}")
    try:
        with Image.open(image) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:  # missing file, truncated or not an image
        raise VisionError(f"sample {sample!r}: cannot read image {str(image)!r}: {err}") from err


def _count_image_items(messages: Sequence[Mapping[str, Any]]) -> int:
    count = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            count += sum(1 for item in content if isinstance(item, Mapping) and item.get("type") == "image")
    return count


def encode_vlm(
    processor: Any,
    messages: Sequence[Mapping[str, Any]],
    images: Sequence[ImageLike],
    sample: str = "?",
    add_generation_prompt: bool = True,
) -> tuple[list[int], dict[str, torch.Tensor] | None]:
    """Encode ONE prompt: chat template (image items become the family's image text), then the processor.

    Returns (input_ids [S] with image placeholders expanded, vision dict or None for a text-only prompt).
    Raises ``VisionError`` naming ``sample`` when the number of images differs from the image items.
    """
    num_items = _count_image_items(messages)
    if len(images) != num_items:
        more = "more images than placeholders" if len(images) > num_items else "fewer images than placeholders"
        raise VisionError(f"sample {sample!r}: {more}: {len(images)} image(s), {num_items} image item(s)")
    text = processor.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    if not images:
        return processor.tokenizer.encode(text, add_special_tokens=False), None
    pil = [load_image(img, sample) for img in images]
    out = processor(text=[text], images=[pil] if _nested_images(processor) else pil, return_tensors="pt")
    vision = {k: v for k, v in out.items() if k not in _TOKEN_FIELDS and isinstance(v, torch.Tensor)}
    return out["input_ids"][0].tolist(), vision


def _nested_images(processor: Any) -> bool:
    """Idefics3 wants images grouped per text; the others take a flat list."""
    return "Idefics3" in type(processor).__name__


def expand_vision(vision: Mapping[str, torch.Tensor] | None, n: int) -> tuple[Mapping[str, torch.Tensor] | None, ...]:
    """A prompt's vision inputs for its ``n`` samples: the same dict (shared tensors, no copies).

    >>> v = {"pixel_values": torch.zeros(4, 3)}
    >>> rows = expand_vision(v, 3)
    >>> len(rows), all(r is v for r in rows)
    (3, True)
    """
    return tuple(vision for _ in range(n))


def _row_name(i: int, sample_ids: Sequence[str] | None) -> str:
    return f"{sample_ids[i]!r} (row {i})" if sample_ids is not None else f"row {i}"


def collate_vision(
    vision: Sequence[Mapping[str, torch.Tensor] | None], sample_ids: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Model kwargs for a micro-batch from per-sample vision dicts, in row order (None: text-only row).

    Qwen2-VL: pixel_values [sum patches, D] and image_grid_thw [num_images, 3] concatenated.
    Idefics3: pixel_values [n, max_images, C, H, W] (+ pixel_attention_mask), zero images pad short rows
    (the model drops all-zero images). LLaVA / others: pixel_values [num_images, C, H, W] concatenated.

    >>> a = {"pixel_values": torch.ones(4, 6), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    >>> out = collate_vision([a, None, a])
    >>> out["pixel_values"].shape, out["image_grid_thw"].tolist()
    (torch.Size([8, 6]), [[1, 2, 2], [1, 2, 2]])
    """
    rows = [(i, v) for i, v in enumerate(vision) if v]
    if not rows:
        return {}
    keys = set(rows[0][1])
    for i, v in rows:
        if set(v) != keys:
            raise VisionError(
                f"sample {_row_name(i, sample_ids)}: vision keys {sorted(v)} differ from {sorted(keys)} in one batch"
            )
    if "pixel_attention_mask" in keys:
        return _collate_padded_images(vision, keys)
    return {k: torch.cat([v[k] for _, v in rows], dim=0) for k in sorted(keys)}


def _collate_padded_images(
    vision: Sequence[Mapping[str, torch.Tensor] | None], keys: set[str]
) -> dict[str, torch.Tensor]:
    """Idefics3 layout: every row gets ``max_images`` slots; missing images are all-zero (dropped by the model)."""
    present = [v for v in vision if v]
    max_images = max(int(v["pixel_values"].shape[1]) for v in present)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(keys):
        template = present[0][key]
        padded = []
        for v in vision:
            t = v[key] if v else template[:, :0]
            pad_shape = (t.shape[0], max_images - t.shape[1], *t.shape[2:])
            padded.append(torch.cat([t, t.new_zeros(pad_shape)], dim=1))
        out[key] = torch.cat(padded, dim=0)
    return out


def _num_image_features(config: PretrainedConfig, vision: Mapping[str, torch.Tensor]) -> int | None:
    """How many placeholder tokens the model will fill from these vision inputs (None: unknown family)."""
    vc = config.vision_config
    if "image_grid_thw" in vision:
        return int(vision["image_grid_thw"].prod(-1).sum()) // vc.spatial_merge_size**2
    if "pixel_attention_mask" in vision:  # Idefics3: image_seq_len tokens per real (non-padding) image
        pixels = vision["pixel_values"].flatten(2)  # [1, n, C*H*W]
        num_real = int((pixels != 0).any(-1).sum())
        return num_real * (vc.image_size // vc.patch_size) ** 2 // config.scale_factor**2
    if getattr(config, "model_type", "") == "llava":
        per_image = (vc.image_size // vc.patch_size) ** 2
        per_image += 1 if config.vision_feature_select_strategy == "full" else 0
        return int(vision["pixel_values"].shape[0]) * per_image
    per_image = getattr(config, "mm_tokens_per_image", None)  # Gemma 3
    return None if per_image is None else int(vision["pixel_values"].shape[0]) * int(per_image)


def check_vision(
    config: PretrainedConfig,
    input_ids: torch.Tensor,
    vision: Sequence[Mapping[str, torch.Tensor] | None],
    sample_ids: Sequence[str] | None = None,
) -> None:
    """Guards, per row of ``input_ids`` [n, L]: placeholders need vision inputs and their counts must match.

    Raises ``VisionError`` naming the sample: image placeholders but no vision inputs (a VLM batch that lost
    its images on the way to the loss); placeholder count != image features; vision inputs but no placeholder.
    """
    token = image_token_id(config)
    if token is None:
        return
    vision = list(vision) if vision else [None] * input_ids.shape[0]
    if len(vision) != input_ids.shape[0]:
        raise VisionError(f"{len(vision)} vision entries for a batch of {input_ids.shape[0]} rows")
    counts = (input_ids == token).sum(-1).tolist()  # [n]
    for i, (count, v) in enumerate(zip(counts, vision, strict=True)):
        if not v:
            if count:
                raise VisionError(
                    f"sample {_row_name(i, sample_ids)}: {count} image placeholder token(s) but no vision inputs "
                    "(the images were dropped before the forward)"
                )
            continue
        expected = _num_image_features(config, v)
        if expected is not None and count != expected:
            raise VisionError(
                f"sample {_row_name(i, sample_ids)}: image placeholder tokens do not match image features: "
                f"{count} placeholder token(s), {expected} feature(s)"
            )


def vision_forward_kwargs(
    config: PretrainedConfig,
    input_ids: torch.Tensor,
    vision: Sequence[Mapping[str, torch.Tensor] | None],
    sample_ids: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Extra kwargs for ``model(input_ids[n, L], attention_mask, **kwargs)``: guards, collation, and for
    Qwen2-VL ``mm_token_type_ids`` [n, L] (1 on image tokens) rebuilt from the padded batch."""
    check_vision(config, input_ids, vision, sample_ids)
    kwargs = collate_vision(vision, sample_ids)
    if kwargs and "image_grid_thw" in kwargs:
        kwargs["mm_token_type_ids"] = (input_ids == image_token_id(config)).to(torch.int32)
    return {k: v.to(input_ids.device) for k, v in kwargs.items()}
