"""Dataset loaders: files on disk -> ``list[Prompt]``, validated at load with ``file:line`` errors.

Formats: JSONL in the shared layout, EasyR1 rows or OpenAI ``messages`` rows (see ``data/rows.py``);
CSV with a header; an image folder holding ``metadata.jsonl`` / ``questions.jsonl`` / ``*.csv`` whose rows
name their image files; and Hugging Face ``datasets`` layouts (these need ``pyarrow``, imported only when
such a file is read): a ``save_to_disk`` folder of a ``Dataset`` or of a ``DatasetDict`` (its ``split``
subfolder), hub-style parquet (``data/<split>-00000-of-0000N.parquet``, ``<split>.parquet``,
``<split>/*.parquet``; every shard of a series is read), single parquet / arrow files, and in-memory
``datasets.Dataset`` / ``DatasetDict`` objects (``prompts_from_dataset``). Built-in names (``gsm8k``,
``countdown``, ...) resolve to the subsets vendored under ``reinforced/assets/data``.

The folder layouts are read with pyarrow rather than ``datasets.load_from_disk`` / ``load_dataset`` so that
training needs no ``datasets`` install and never touches the hub; rows are the same Python objects
(image columns as ``{"bytes", "path"}`` dicts, decoded by ``rows.resolve_image``).

Every load returns a ``LoadSummary`` (rows, images, answer types, rows skipped and why); a malformed row
is an error naming ``file:line`` unless the source sets ``skip_invalid: true``, which records it instead.
"""

from __future__ import annotations

import csv
import json
import re
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


DATA_SUFFIXES = (".jsonl", ".parquet", ".arrow", ".csv")
SHARD = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")  # hub / save_to_disk shard names


def resolve_path(path: str, split: str) -> Path:
    """A built-in name, a file, or a folder holding the split -> the file or folder to read.

    Folders: ``<split>.<ext>``, a ``DatasetDict.save_to_disk`` folder (``dataset_dict.json`` + ``<split>/``), hub
    parquet shards ``[data/]<split>-00000-of-0000N.parquet`` (the first shard; the loader reads the series),
    or a ``<split>/`` folder of parquet / arrow files; a ``Dataset.save_to_disk`` folder is itself the data.
    """
    p = Path(path).expanduser()
    if not p.exists() and (ASSETS / path).is_dir():
        p = ASSETS / path
    if not p.exists():
        raise DataError(f"data path {path!r} not found; built-in sets: {', '.join(builtin_names())}")
    if p.is_dir() and not _is_special_folder(p):
        found = _split_in_folder(p, split)
        if found is None:
            raise DataError(f"{p} has no split {split!r}; available splits: {', '.join(_splits(p)) or 'none'}")
        return found
    return p


def _split_in_folder(p: Path, split: str) -> Path | None:
    if (p / "dataset_dict.json").is_file():
        return p / split if (p / split).is_dir() else None
    for folder in (p, p / "data"):
        found = sorted(f for f in folder.glob(f"{split}.*") if f.suffix in DATA_SUFFIXES)
        found = found or sorted(folder.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].*"))
        if found:
            return found[0]
    if (p / split).is_dir() and any(f.suffix in (".parquet", ".arrow") for f in (p / split).iterdir()):
        return p / split
    return None


def _splits(p: Path) -> list[str]:
    """Split names a folder offers (for the error listing them)."""
    if (p / "dataset_dict.json").is_file():
        return list(json.loads((p / "dataset_dict.json").read_text()).get("splits", []))
    names = set()
    for folder in (p, p / "data"):
        for f in folder.glob("*") if folder.is_dir() else ():
            if f.suffix in DATA_SUFFIXES:
                match = SHARD.match(f.stem)
                names.add(match["prefix"] if match else f.stem)
            elif f.is_dir() and f.name != "data" and any(g.suffix in (".parquet", ".arrow") for g in f.iterdir()):
                names.add(f.name)
    return sorted(names)


def _is_special_folder(p: Path) -> bool:
    """A folder that is one data set itself: ``Dataset.save_to_disk`` output or an image folder."""
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
    files = _arrow_files(path)
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


def _arrow_files(path: Path) -> list[Path]:
    """The files of one split: a folder's parquet / arrow files, or every shard of ``path``'s series."""
    if path.is_dir():
        return sorted(f for f in path.iterdir() if f.suffix in (".parquet", ".arrow"))
    match = SHARD.match(path.stem)
    if match is None:
        return [path]
    count = int(match["count"])
    files = [path.with_name(f"{match['prefix']}-{i:05d}-of-{count:05d}{path.suffix}") for i in range(count)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path.parent}: shard(s) {', '.join(missing)} of the {count}-file series are missing")
    return files


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
    return _parse_all(str(file), file.parent, rows, name, limit, options)


SPLIT_NAMES = ("train", "test", "validation", "val", "dev", "metadata", "questions")


def _default_name(file: Path) -> str:
    """``gsm8k/train.jsonl`` -> gsm8k; ``repo/data/train-00000-of-00002.parquet`` -> repo; ``ds/train/`` -> ds."""
    match = SHARD.match(file.stem)
    stem = match["prefix"] if match else file.stem
    parent = file.parent
    if stem not in SPLIT_NAMES:
        return stem
    if parent.name == "data" and parent.parent.name:
        parent = parent.parent
    return parent.name


def _parse_all(file: str, base_dir: Path | None, rows: Iterable[tuple[int, Any]], name: str, limit: int | None,
               options: Mapping[str, Any]) -> tuple[list[Prompt], LoadSummary]:
    """Parse rows; ``file`` names the source in errors (``file:line``), relative image paths start at ``base_dir``."""
    summary = LoadSummary(path=file)
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
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


def prompts_from_dataset(data: Any, split: str = "train", columns: Mapping[str, str] | None = None, *,
                         name: str | None = None, limit: int | None = None, **options: Any) -> list[Prompt]:
    """Prompts from a Hugging Face ``datasets`` object or a data path.

    ``data``: a ``datasets.Dataset`` (or ``IterableDataset``), a ``DatasetDict`` (``split`` picks one), a list of
    dict rows, or a path ``load_file`` reads (``save_to_disk`` folders, hub-style parquet layouts, JSONL, CSV, ...).
    ``columns`` maps our fields to the data set's columns (``{"question": "query", "answer": "label"}``);
    otherwise the row layout is detected from ``prompt`` (TRL, a string or a conversation), ``messages``,
    ``problem`` or ``question``, and the gold from ``answer`` / ``solution`` / ``ground_truth``. Images may be
    PIL images, bytes or paths (relative to the data folder, or for in-memory objects, the working directory).
    ``options``: ``format``, ``skip_invalid``, ``image_column`` as for ``load_file``.

    Raises ``DataError`` naming the row (``<source>:<row>``) or the missing split.
    """
    if columns is not None:
        options["columns"] = dict(columns)
    if isinstance(data, (str, Path)):
        return load_file(resolve_path(str(data), split), task=name, limit=limit, **options)[0]
    _check_options(options, type(data).__name__)
    if isinstance(data, Mapping) and all(hasattr(v, "column_names") for v in data.values()):  # DatasetDict
        if split not in data:
            raise DataError(f"the DatasetDict has no split {split!r}; available splits: {', '.join(data) or 'none'}")
        data = data[split]
    rows_given = isinstance(data, list) and all(isinstance(r, Mapping) for r in data)  # Trainer's dict rows
    if not rows_given and (not hasattr(data, "column_names") or not isinstance(data, Iterable)):
        raise DataError(f"expected a datasets.Dataset, DatasetDict, a list of dict rows or a data path, "
                        f"got {type(data).__name__}")
    label = name or options.get("name") or _dataset_name(data, split)
    rows = ((i, dict(row)) for i, row in enumerate(data, start=1))
    return _parse_all(f"<{label}:{split}>", None, rows, label, limit, options)[0]


def _dataset_name(data: Any, split: str) -> str:
    """The data set's builder name when it has one (``DatasetInfo.dataset_name``), else ``dataset``."""
    info = getattr(data, "info", None)
    return str(getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "dataset")
