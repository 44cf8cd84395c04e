"""Row parsers: one JSON-like row of a known layout -> ``Prompt``, with errors that say what is wrong.

Layouts (detected per row from its keys, or forced with the loader option ``format``):

- ``shared``: the layout of the shared data folder: ``id``, ``question``, ``answer``, optional ``choices``,
  ``image`` (one path) or ``images`` (list), ``answer_type``, ``meta``.
- ``easyr1``: EasyR1 / verl rows: ``problem``, ``answer``, ``images`` (list), where the problem text holds
  one ``<image>`` placeholder per image.
- ``messages``: OpenAI-style chat rows: ``messages`` (system / user turns, content strings or content items
  ``{"type": "text"}``, ``{"type": "image", "image": path}``, ``{"type": "image_url", "image_url": {"url": ..}}``)
  and the gold answer in ``answer`` or, failing that, in a final assistant turn (which is then dropped).
  A bare ``{"type": "image"}`` item takes the next image of the row's ``images`` / ``image`` column (TRL).
- ``prompt``: TRL rows (https://huggingface.co/docs/trl/dataset_formats): ``prompt`` as a string (read like
  ``question``) or as a conversation (read like ``messages``), images in ``images`` / ``image``.

The gold answer is the first present of ``answer``, ``solution``, ``ground_truth`` and verl's
``reward_model.ground_truth``. Images may be paths, PIL images, raw bytes or ``datasets`` Image dicts
(``{"bytes", "path"}``).

A column mapping (``columns: {question: "prompt", answer: "solution"}``) renames source keys to ours
before parsing. Image paths stay paths (loaded lazily by ``models.processing``) and resolve relative to
``base_dir``; a row whose images do not match its ``<image>`` placeholders is an error.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from reinforced.types import ImageLike, Prompt

IMAGE_PLACEHOLDER = "<image>"
CHOICE_LETTERS = "ABCDEFGHIJ"
LAYOUTS = ("shared", "easyr1", "messages", "prompt")
GOLD_COLUMNS = ("answer", "solution", "ground_truth")


class RowError(ValueError):
    """A row is malformed; the loader adds ``file:line`` in front of the message."""


def detect_layout(row: Mapping[str, Any]) -> str:
    """The row layout from its keys.

    >>> detect_layout({"problem": "1+1?", "answer": "2"})
    'easyr1'
    >>> detect_layout({"messages": []})
    'messages'
    """
    if "messages" in row:
        return "messages"
    if "problem" in row and "question" not in row:
        return "easyr1"
    if "question" in row:
        return "shared"
    if "prompt" in row:
        return "prompt"
    raise RowError(f"cannot tell the row layout from its keys {sorted(row)}; expected 'question' (shared), "
                   "'problem' (easyr1), 'messages' (OpenAI chat) or 'prompt' (TRL); map columns with "
                   "params.columns")


def rename_columns(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """Rename source keys to ours: ``columns`` maps *our* field name -> the source column.

    >>> rename_columns({"prompt": "2+2?", "sol": "4"}, {"question": "prompt", "answer": "sol"})
    {'question': '2+2?', 'answer': '4'}
    """
    out = dict(row)
    for ours, theirs in columns.items():
        if theirs not in row:
            raise RowError(f"column mapping {ours!r} -> {theirs!r}: the row has no column {theirs!r}; "
                           f"columns: {sorted(row)}")
        out.pop(theirs)
        out[ours] = row[theirs]
    return out


def resolve_image(ref: Any, base_dir: Path | None) -> ImageLike:
    """A path relative to the data file, an absolute path, ``file://`` URL, a data URI, or a PIL image."""
    if not isinstance(ref, str):
        if hasattr(ref, "size") and hasattr(ref, "mode"):  # already a PIL image
            return ref
        if isinstance(ref, (bytes, bytearray)):  # an encoded image file held in a column
            return _open_bytes(bytes(ref))
        if isinstance(ref, Mapping) and ("path" in ref or "bytes" in ref):  # HF datasets Image feature
            if ref.get("bytes"):
                return _open_bytes(ref["bytes"])
            ref = ref["path"]
        else:
            raise RowError(f"an image must be a path string, got {type(ref).__name__}: {ref!r:.80}")
    if ref.startswith("data:"):
        _, _, payload = ref.partition(",")
        return _open_bytes(base64.b64decode(payload))
    if ref.startswith(("http://", "https://")):
        raise RowError(f"remote image {ref!r:.80} is not supported: download it and give a local path")
    path = Path(ref.removeprefix("file://"))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise RowError(f"image not found: {path}")
    _check_decodes(lambda: path.open("rb"), str(path))
    return str(path.resolve())


def _check_decodes(open_file: Any, name: str) -> None:
    """Decode the image once at load: a corrupt or truncated file fails here, naming the row, not mid-run."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_file() as f, Image.open(f) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RowError(f"corrupt image {name}: {err}") from None


def _open_bytes(data: bytes) -> ImageLike:
    from PIL import Image

    _check_decodes(lambda: io.BytesIO(data), f"({len(data)} embedded bytes)")
    return Image.open(io.BytesIO(data))


def gold_value(row: Mapping[str, Any]) -> Any:
    """The row's gold answer: the first present of ``GOLD_COLUMNS``, then verl's ``reward_model.ground_truth``.

    >>> gold_value({"problem": "1+1?", "solution": "2"}), gold_value({"reward_model": {"ground_truth": "7"}})
    ('2', '7')
    """
    for key in GOLD_COLUMNS:
        if row.get(key) is not None:
            return row[key]
    nested = row.get("reward_model")
    return nested.get("ground_truth") if isinstance(nested, Mapping) else None


def _answer_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"'answer' must be a string or number, got {type(value).__name__}: {value!r:.80}")
    return str(value).strip()


def _choices(row: Mapping[str, Any]) -> tuple[str, ...]:
    raw = row.get("choices") or row.get("options") or ()
    if not isinstance(raw, (list, tuple)):
        raise RowError(f"'choices' must be a list, got {type(raw).__name__}")
    if len(raw) > len(CHOICE_LETTERS):
        raise RowError(f"at most {len(CHOICE_LETTERS)} choices are supported, got {len(raw)}")
    return tuple(str(c) for c in raw)


def _check_choice_answer(answer: str | None, choices: tuple[str, ...]) -> None:
    if not choices or answer is None:
        return
    letters = CHOICE_LETTERS[: len(choices)]
    if answer not in letters:
        raise RowError(f"multiple-choice answer {answer!r} must be one of the letters {', '.join(letters)}")


def _image_list(row: Mapping[str, Any], base_dir: Path | None) -> tuple[ImageLike, ...]:
    refs = row.get("images")
    if refs is None:
        refs = [row["image"]] if row.get("image") else []
    if not isinstance(refs, (list, tuple)):
        raise RowError(f"'images' must be a list of paths, got {type(refs).__name__}")
    return tuple(resolve_image(r, base_dir) for r in refs)


def _check_placeholders(text: str, num_images: int) -> None:
    found = text.count(IMAGE_PLACEHOLDER)
    if found and found != num_images:
        raise RowError(f"the text has {found} {IMAGE_PLACEHOLDER} placeholder(s) but the row has "
                       f"{num_images} image(s)")


def _base_prompt(row: Mapping[str, Any], text: str, images: tuple[ImageLike, ...], row_id: str,
                 task: str) -> Prompt:
    if not isinstance(text, str) or not text.strip():
        raise RowError("the question text is missing or empty")
    answer = _answer_text(gold_value(row))
    choices = _choices(row)
    _check_choice_answer(answer, choices)
    answer_type = row.get("answer_type") or ("choice" if choices else "text")
    meta = row.get("meta") or row.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise RowError(f"'meta' must be an object, got {type(meta).__name__}")
    if isinstance(row.get("target"), str):  # an SFT target (reasoning trace + answer), read by training/sft.py
        meta = {**meta, "target": row["target"]}
    return Prompt(prompt_id=str(row.get("id", row_id)), question=text, answer=answer, choices=choices,
                  images=images, answer_type=str(answer_type), task=task, metadata=dict(meta),
                  reward_set=row.get("reward_set"), system=row.get("system"))


def parse_shared(row: Mapping[str, Any], base_dir: Path | None, row_id: str, task: str) -> Prompt:
    """A row of the shared data layout (``question``, ``answer``, ``image``/``images``, ``choices``)."""
    images = _image_list(row, base_dir)
    text = row.get("question")
    _check_placeholders(text or "", len(images))
    return _base_prompt(row, text, images, row_id, task)


def parse_easyr1(row: Mapping[str, Any], base_dir: Path | None, row_id: str, task: str) -> Prompt:
    """An EasyR1 row: ``problem`` with one ``<image>`` placeholder per entry of ``images``."""
    images = _image_list(row, base_dir)
    text = row.get("problem")
    if images and (text or "").count(IMAGE_PLACEHOLDER) != len(images):
        raise RowError(f"the problem has {(text or '').count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} "
                       f"placeholder(s) but the row has {len(images)} image(s)")
    return _base_prompt(row, text, images, row_id, task)


def _content_items(content: Any, base_dir: Path | None, images: list[ImageLike], row_images: list[Any] | None = None
                   ) -> str:
    """Flatten one message's content to text with ``<image>`` placeholders, collecting its images; a bare
    ``{"type": "image"}`` item takes the next of ``row_images`` (the row's image column)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RowError(f"message content must be a string or a list of items, got {type(content).__name__}")
    parts = []
    for item in content:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind == "text":
            parts.append(str(item.get("text", "")))
        elif kind in ("image", "image_url"):
            ref = item.get("image") or item.get("path") or item.get("url")
            if kind == "image_url":
                url = item.get("image_url")
                ref = url.get("url") if isinstance(url, Mapping) else url
            if ref is None and row_images:
                ref = row_images.pop(0)
            if ref is None:
                raise RowError(f"image item without a path (and no image left in the row's images): {item!r:.80}")
            images.append(resolve_image(ref, base_dir))
            parts.append(IMAGE_PLACEHOLDER)
        else:
            raise RowError(f"unknown content item type {kind!r}; valid: text, image, image_url")
    return "".join(parts)


def parse_messages(row: Mapping[str, Any], base_dir: Path | None, row_id: str, task: str) -> Prompt:
    """An OpenAI-style chat row; the question is the last user turn, the rest become ``messages``."""
    raw = row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RowError("'messages' must be a non-empty list of {role, content} turns")
    answer = gold_value(row)
    turns = list(raw)
    if answer is None and isinstance(turns[-1], Mapping) and turns[-1].get("role") == "assistant":
        answer = turns.pop()["content"]
    images: list[ImageLike] = []
    row_images = _row_image_refs(row)
    messages = []
    for turn in turns:
        if not isinstance(turn, Mapping) or turn.get("role") not in ("system", "user", "assistant"):
            raise RowError(f"each turn needs a role of system, user or assistant, got {turn!r:.80}")
        content = _content_items(turn.get("content"), base_dir, images, row_images)
        messages.append({"role": turn["role"], "content": content})
    if row_images:
        raise RowError(f"the row has {len(row_images)} image(s) more than the conversation's image items")
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise RowError("the conversation has no user turn")
    fields = {**row, "answer": answer if not isinstance(answer, list) else _content_items(answer, None, [])}
    prompt = _base_prompt(fields, users[-1]["content"], tuple(images), row_id, task)
    return replace(prompt, messages=tuple(messages))


def _row_image_refs(row: Mapping[str, Any]) -> list[Any]:
    refs = row.get("images")
    if refs is None:
        refs = [row["image"]] if row.get("image") is not None else []
    return list(refs) if isinstance(refs, (list, tuple)) else [refs]


def parse_prompt(row: Mapping[str, Any], base_dir: Path | None, row_id: str, task: str) -> Prompt:
    """A TRL row: ``prompt`` as a string (like ``question``) or a conversation (like ``messages``)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        return parse_messages({**row, "messages": prompt}, base_dir, row_id, task)
    if not isinstance(prompt, str):
        raise RowError(f"'prompt' must be a string or a list of chat turns, got {type(prompt).__name__}")
    return parse_shared({**row, "question": prompt}, base_dir, row_id, task)


PARSERS = {"shared": parse_shared, "easyr1": parse_easyr1, "messages": parse_messages, "prompt": parse_prompt}


def parse_row(row: Any, base_dir: Path | None, row_id: str, task: str, layout: str | None = None,
              columns: Mapping[str, str] | None = None) -> Prompt:
    """Any supported layout -> Prompt; ``layout`` None detects it from the keys."""
    if not isinstance(row, Mapping):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if columns:
        row = rename_columns(row, columns)
    layout = layout or detect_layout(row)
    if layout not in PARSERS:
        raise RowError(f"unknown row format {layout!r}; valid: {', '.join(LAYOUTS)}")
    return PARSERS[layout](row, base_dir, row_id, task)
