"""Dataset loaders: files on disk -> ``list[Prompt]``, validated at load with ``file:line`` errors.

Formats: JSONL in the shared layout, EasyR1 rows or OpenAI ``messages`` rows (see ``data/rows.py``);
CSV with a header; an image folder holding ``metadata.jsonl`` / ``questions.jsonl`` / ``*.csv`` whose rows
name their image files; and Hugging Face ``datasets`` saved on disk, parquet or arrow files (these need
``pyarrow``, imported only when such a file is read). Built-in names (``gsm8k``, ``countdown``, ...)
resolve to the subsets vendored under ``reinforced/assets/data``.

Every load returns a ``LoadSummary`` (rows, images, answer types, rows skipped and why); a malformed row
is an error naming ``file:line`` unless the source sets ``skip_invalid: true``, which records it instead.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reinforced.data.rows import RowError, parse_row
from reinforced.types import Prompt

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "data"
QUESTION_FILES = ("metadata.jsonl", "questions.jsonl", "metadata.csv", "questions.csv")
LOADER_OPTIONS = ("format", "columns", "skip_invalid", "name", "image_column")


class DataError(ValueError):
    """A data file problem; the message starts with ``file:line`` when a row is at fault."""


@dataclass
class LoadSummary:
    """What a load read: counts, answer types, and the rows it skipped (``(line, reason)``)."""

    path: str
    rows: int = 0
    images: int = 0
    answer_types: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    """The file line (or row number) of each loaded prompt, in order: load-time checks name ``file:line``."""

    def add(self, prompt: Prompt, line: int = 0) -> None:
        self.lines.append(line)
        self.rows += 1
        self.images += prompt.num_images
        self.answer_types[prompt.answer_type] += 1

    def __str__(self) -> str:
        types = ", ".join(f"{k} {v}" for k, v in self.answer_types.most_common())
        text = f"{self.path}: {self.rows} rows, {self.images} images; answer types: {types or 'none'}"
        if self.skipped:
            reasons = Counter(reason for _, reason in self.skipped)
            text += f"; skipped {len(self.skipped)}: " + "; ".join(f"{r} (x{n})" for r, n in reasons.items())
        return text


def builtin_names() -> list[str]:
    """Names of the vendored data sets (``DataSource(path=name)``)."""
    return sorted(p.name for p in ASSETS.iterdir() if p.is_dir()) if ASSETS.is_dir() else []


def resolve_path(path: str, split: str) -> Path:
    """A built-in name, a file, or a folder holding ``<split>.jsonl`` -> the file or folder to read."""
    p = Path(path).expanduser()
    if not p.exists() and (ASSETS / path).is_dir():
        p = ASSETS / path
    if not p.exists():
        raise DataError(f"data path {path!r} not found; built-in sets: {', '.join(builtin_names())}")
    if p.is_dir() and not _is_special_folder(p):
        found = sorted(p.glob(f"{split}.*"))
        if not found:
            splits = sorted({f.stem for f in p.iterdir() if f.suffix in (".jsonl", ".parquet", ".arrow", ".csv")})
            raise DataError(f"{p} has no split {split!r}; available splits: {', '.join(splits) or 'none'}")
        return found[0]
    return p


def _is_special_folder(p: Path) -> bool:
    return (p / "dataset_info.json").is_file() or (p / "state.json").is_file() or any(
        (p / name).is_file() for name in QUESTION_FILES)


def _rows_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, RowError(f"invalid JSON: {err.msg} at column {err.colno}")


def _rows_csv(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            yield i, {k: _csv_value(k, v) for k, v in row.items() if k is not None}


def _csv_value(key: str, value: str | None) -> Any:
    """CSV cells are strings; list/object fields (choices, images, meta) may be written as JSON."""
    if value is not None and key in ("choices", "images", "meta", "metadata") and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _rows_arrow(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DataError(f"{path}: reading parquet/arrow needs pyarrow (pip install pyarrow)") from err
    files = sorted(path.glob("*.arrow")) if path.is_dir() else [path]
    offset = 0
    for file in files:
        if file.suffix == ".parquet":
            table = pq.read_table(file)
        else:
            with pa.memory_map(str(file)) as source:
                try:
                    table = pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(source).read_all()
        for i, row in enumerate(table.to_pylist()):
            yield offset + i + 1, row  # "line" = 1-based row number across the files
        offset += table.num_rows


def _image_folder_rows(folder: Path, image_column: str) -> tuple[Path, Iterator[tuple[int, Any]]]:
    """An image folder: its question file's rows, with ``file_name`` (HF imagefolder) read as the image."""
    qfile = next(folder / n for n in QUESTION_FILES if (folder / n).is_file())
    rows = _rows_csv(qfile) if qfile.suffix == ".csv" else _rows_jsonl(qfile)

    def with_images() -> Iterator[tuple[int, Any]]:
        for line, row in rows:
            if isinstance(row, dict) and image_column in row and "image" not in row:
                row["image"] = row.pop(image_column)
            yield line, row

    return qfile, with_images()


def _rows(path: Path, options: Mapping[str, Any]) -> tuple[Path, Iterator[tuple[int, Any]]]:
    if path.is_dir():
        if any((path / n).is_file() for n in QUESTION_FILES):
            return _image_folder_rows(path, options.get("image_column", "file_name"))
        return path, _rows_arrow(path)
    if path.suffix == ".jsonl":
        return path, _rows_jsonl(path)
    if path.suffix == ".csv":
        return path, _rows_csv(path)
    if path.suffix in (".parquet", ".arrow"):
        return path, _rows_arrow(path)
    raise DataError(f"{path}: unknown data file type {path.suffix!r}; valid: .jsonl, .csv, .parquet, .arrow, "
                    "a folder saved by datasets.save_to_disk, or an image folder with metadata.jsonl")


def _check_options(options: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(options) - set(LOADER_OPTIONS))
    if unknown:
        raise DataError(f"{where}: unknown loader option(s) {unknown}; valid: {', '.join(LOADER_OPTIONS)}")


def load_file(path: str | Path, *, task: str | None = None, limit: int | None = None,
              **options: Any) -> tuple[list[Prompt], LoadSummary]:
    """Read a data file or folder into Prompts plus a summary.

    ``options``: ``format`` (shared | easyr1 | messages; default: detect per row), ``columns`` (our field ->
    source column), ``skip_invalid`` (record malformed rows instead of failing), ``image_column``
    (image-folder file-name column, default ``file_name``), ``name`` (the source name, default the
    file's parent folder or stem). Every prompt's ``task`` is that name.
    """
    _check_options(options, str(path))
    path = Path(path)
    file, rows = _rows(path, options)
    name = task or options.get("name") or _default_name(file)
    return _parse_all(file, rows, name, limit, options)


def _default_name(file: Path) -> str:
    parent = file.parent.name
    return parent if file.stem in ("train", "test", "validation", "val", "dev", "metadata", "questions") else file.stem


def _parse_all(file: Path, rows: Iterable[tuple[int, Any]], name: str, limit: int | None,
               options: Mapping[str, Any]) -> tuple[list[Prompt], LoadSummary]:
    summary = LoadSummary(path=str(file))
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    base_dir = file.parent
    for line, row in rows:
        if limit is not None and len(prompts) >= limit:
            break
        try:
            if isinstance(row, RowError):
                raise row
            prompt = parse_row(row, base_dir, f"{name}-{line}", name, options.get("format"), options.get("columns"))
            if prompt.prompt_id in seen:
                raise RowError(f"duplicate id {prompt.prompt_id!r} (first at line {seen[prompt.prompt_id]})")
        except RowError as err:
            if not options.get("skip_invalid", False):
                raise DataError(f"{file}:{line}: {err}") from None
            summary.skipped.append((line, str(err)))
            continue
        seen[prompt.prompt_id] = line
        prompts.append(prompt)
        summary.add(prompt, line)
    if not prompts:
        raise DataError(f"{file}: no usable rows ({len(summary.skipped)} skipped)")
    return prompts, summary


def load_jsonl(path: str | Path, **options: Any) -> list[Prompt]:
    """Read a JSONL file (shared, EasyR1 or OpenAI-messages rows) into Prompts; errors name ``file:line``.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); f = os.path.join(d, "t.jsonl")
    >>> _ = open(f, "w").write('{"id": "a", "question": "1+1?", "answer": "2", "answer_type": "number"}\\n')
    >>> [(p.prompt_id, p.answer, p.task) for p in load_jsonl(f)]
    [('a', '2', 't')]
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        raise DataError(f"{path}: load_jsonl reads .jsonl files; use load_file for other formats")
    return load_file(path, **options)[0]
