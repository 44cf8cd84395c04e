"""Hugging Face ``datasets`` layouts, built locally (no hub) and read into Prompts through the public entry
points: ``prompts_from_dataset`` (objects and paths) and a YAML config's data source (``path`` + ``split`` +
column mapping) through ``build_sampler``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reinforced.config import load_config
from reinforced.data import DataError, build_sampler, prompts_from_dataset

datasets = pytest.importorskip("datasets")  # installed by `make test` (the dev extra)


def square(size: int, shade: int) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), shade, dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(image: object) -> list:
    assert isinstance(image, (str, Image.Image)), type(image)
    return np.asarray(Image.open(image) if isinstance(image, str) else image.convert("RGB")).tolist()


def trl_rows(n: int) -> dict[str, list]:
    """TRL-style rows: conversational prompts with an image item, gold in ``solution``."""
    return {
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"shade {i}?"}]}]
                   for i in range(n)],
        "images": [[square(8, 10 * i)] for i in range(n)],
        "solution": [str(10 * i) for i in range(n)],
    }


def check_trl(prompts: list, n: int) -> None:
    assert [p.answer for p in prompts] == [str(10 * i) for i in range(n)]
    assert [p.question for p in prompts] == [f"<image>shade {i}?" for i in range(n)]
    for i, p in enumerate(prompts):
        assert p.num_images == 1 and pixels(p.images[0]) == pixels(square(8, 10 * i))


def test_dataset_object_with_trl_conversational_prompt_and_pil_images() -> None:
    ds = datasets.Dataset.from_dict(trl_rows(3))
    check_trl(prompts_from_dataset(ds), 3)
    check_trl(prompts_from_dataset(datasets.DatasetDict({"train": ds, "test": ds.select([0])})), 3)
    with pytest.raises(DataError, match="no split 'validation'; available splits: train, test"):
        prompts_from_dataset(datasets.DatasetDict({"train": ds, "test": ds}), split="validation")


def test_save_to_disk_folders_of_dataset_and_dataset_dict(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict(trl_rows(4))
    ds.save_to_disk(tmp_path / "single")
    check_trl(prompts_from_dataset(tmp_path / "single"), 4)
    check_trl(prompts_from_dataset(datasets.load_from_disk(str(tmp_path / "single"))), 4)
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(tmp_path / "dict")
    check_trl(prompts_from_dataset(tmp_path / "dict", split="test"), 2)
    check_trl(prompts_from_dataset(datasets.load_from_disk(str(tmp_path / "dict")), split="test"), 2)
    with pytest.raises(DataError, match="no split 'dev'; available splits: train, test"):
        prompts_from_dataset(tmp_path / "dict", split="dev")


def test_hub_parquet_shards_with_string_prompt_bytes_and_paths(tmp_path: Path) -> None:
    (tmp_path / "repo" / "data").mkdir(parents=True)
    square(8, 200).save(tmp_path / "repo" / "data" / "grey.png")
    rows = {
        "prompt": [f"What is {i} + {i}?" for i in range(5)],
        "image": [png_bytes(square(8, 7 * i)) for i in range(5)],
        "ground_truth": [str(2 * i) for i in range(5)],
    }
    ds = datasets.Dataset.from_dict(rows)
    for k, shard in enumerate((ds.select(range(3)), ds.select(range(3, 5)))):  # two shards, one split
        shard.to_parquet(tmp_path / "repo" / "data" / f"train-{k:05d}-of-00002.parquet")
    paths = datasets.Dataset.from_dict({"question": ["grey?"], "image": ["grey.png"], "answer": ["200"]})
    paths.to_parquet(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet")

    train = prompts_from_dataset(tmp_path / "repo")
    assert [(p.question, p.answer, p.task) for p in train] == [(f"What is {i} + {i}?", str(2 * i), "repo")
                                                               for i in range(5)]
    assert [pixels(p.images[0]) for p in train] == [pixels(square(8, 7 * i)) for i in range(5)]
    test = prompts_from_dataset(tmp_path / "repo", split="test")
    assert test[0].images == (str((tmp_path / "repo" / "data" / "grey.png").resolve()),)  # beside the file
    with pytest.raises(DataError, match="available splits: test, train"):
        prompts_from_dataset(tmp_path / "repo", split="validation")
    (tmp_path / "repo" / "data" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(DataError, match="train-00001-of-00002.parquet of the 2-file series are missing"):
        prompts_from_dataset(tmp_path / "repo")


def test_problem_and_question_columns_and_a_column_mapping(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"problem": ["1+1?"], "solution": ["2"]})
    assert [(p.question, p.answer) for p in prompts_from_dataset(ds)] == [("1+1?", "2")]
    ds = datasets.Dataset.from_dict({"query": ["2+2?"], "label": ["4"], "answer": ["wrong"]})
    with pytest.raises(DataError, match="cannot tell the row layout"):
        prompts_from_dataset(ds)
    mapped = prompts_from_dataset(ds.remove_columns("answer"), columns={"question": "query", "answer": "label"})
    assert [(p.question, p.answer) for p in mapped] == [("2+2?", "4")]
    bad = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": [{"type": "image"}]}]],
                                      "answer": ["1"]})
    with pytest.raises(DataError, match=r"<dataset:train>:1: image item without a path"):
        prompts_from_dataset(bad)


def test_yaml_data_source_reads_a_save_to_disk_split_with_a_column_mapping(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"query": [f"q{i}" for i in range(6)], "label": [str(i) for i in range(6)]})
    datasets.DatasetDict({"train": ds.select(range(4)), "validation": ds.select(range(4, 6))}).save_to_disk(
        tmp_path / "mine")
    config = tmp_path / "run.yaml"
    config.write_text(f"""
data:
  train:
    - path: {tmp_path / 'mine'}
      split: validation
      params: {{columns: {{question: query, answer: label}}}}
""")
    cfg = load_config(str(config), [])
    sampler = build_sampler(cfg.data, seed=0)
    (source,) = sampler.sources
    assert source.name == "mine"
    assert [(p.question, p.answer, p.task) for p in source.pool] == [("q4", "4", "mine"), ("q5", "5", "mine")]
