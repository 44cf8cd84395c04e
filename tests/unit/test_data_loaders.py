"""Loaders: vendored real subsets, synthetic files of the other formats, and file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from reinforced.config import DataConfig, DataSource
from reinforced.data import DataError, build_sampler, builtin_names, load_file, load_jsonl
from reinforced.data.datasets import ASSETS, resolve_path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def png(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (255, 0, 0)).save(path)
    return path


@pytest.mark.parametrize(("name", "split", "rows", "types"), [
    ("gsm8k", "train", 200, {"number"}), ("gsm8k", "test", 200, {"number"}),
    ("countdown", "test", 100, {"expression_equals_target"}), ("game24", "test", 100, {"expression_equals_target"}),
    ("sudoku4x4", "test", 100, {"grid"}), ("math500", "test", 100, {"number", "latex"}),
    ("puzzlevqa", "test", 20, {"choice"}), ("geometry3k_mini", "test", 10, {"choice"}),
])
def test_vendored_sets_load_with_summary(name: str, split: str, rows: int, types: set[str]) -> None:
    prompts, summary = load_file(resolve_path(name, split))
    assert summary.rows == len(prompts) == rows
    assert set(summary.answer_types) == types and not summary.skipped
    assert all(p.task == name for p in prompts)
    if name in ("puzzlevqa", "geometry3k_mini"):
        assert summary.images == rows and all(Path(p.images[0]).is_file() for p in prompts)
        assert all(p.answer in "ABCD"[: len(p.choices)] for p in prompts)


def test_vendored_rows_equal_the_shared_originals() -> None:
    if not (SHARED / "gsm8k").is_dir():
        pytest.skip("shared data folder not present")
    ours = load_jsonl(ASSETS / "gsm8k" / "test.jsonl")
    theirs = load_jsonl(SHARED / "gsm8k" / "test.jsonl", limit=200)
    assert [(p.prompt_id, p.question, p.answer) for p in ours] == [(p.prompt_id, p.question, p.answer) for p in theirs]


def test_builtin_names_and_shared_folder_resolve() -> None:
    assert {"gsm8k", "countdown", "math500", "puzzlevqa"} <= set(builtin_names())
    assert "tabmwp" not in builtin_names()  # non-commercial: never vendored
    sampler = build_sampler(DataConfig(train=(DataSource(path="gsm8k"),)), seed=0)
    assert sampler.next(1)[0].prompt_id.startswith("gsm8k-train-")
    if (SHARED / "countdown").is_dir():
        prompts, _ = load_file(resolve_path(str(SHARED / "countdown"), "test"))
        assert len(prompts) == 256
    with pytest.raises(DataError, match="no split 'train'; available splits: test"):
        resolve_path("countdown", "train")
    with pytest.raises(DataError, match="built-in sets: .*gsm8k"):
        resolve_path("gsm8kk", "train")


def test_easyr1_rows_with_placeholders(tmp_path: Path) -> None:
    png(tmp_path / "img" / "a.png"), png(tmp_path / "img" / "b.png")
    f = write_jsonl(tmp_path / "e.jsonl", [
        {"problem": "Compare <image> and <image>. Which is larger?", "answer": "1", "images": ["img/a.png", "img/b.png"]},
        {"problem": "What is 2+3?", "answer": 5},
    ])
    prompts = load_jsonl(f)
    assert prompts[0].num_images == 2 and prompts[0].images[0] == str((tmp_path / "img" / "a.png").resolve())
    assert prompts[1].answer == "5" and prompts[1].prompt_id == "e-2"


def test_openai_messages_rows(tmp_path: Path) -> None:
    png(tmp_path / "x.png")
    f = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}},
                                                   {"type": "text", "text": "How many squares?"}]},
                      {"role": "assistant", "content": "1"}]},
    ])
    (p,) = load_jsonl(f)
    assert p.answer == "1" and p.num_images == 1 and p.question == "<image>How many squares?"
    assert [m["role"] for m in p.messages] == ["system", "user"]  # the gold assistant turn is not a prompt turn


def test_csv_and_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    png(folder / "one.png", (10, 20))
    (folder / "metadata.csv").write_text('file_name,question,answer,choices\none.png,Which shape?,B,"[""circle"", ""square""]"\n')
    prompts, summary = load_file(folder)
    assert summary.images == 1 and prompts[0].choices == ("circle", "square") and prompts[0].answer == "B"
    assert prompts[0].task == "shapes"


def test_column_mapping(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "1+1?", "solution": "2", "uid": "q1"}])
    (p,) = load_jsonl(f, columns={"question": "prompt", "answer": "solution", "id": "uid"})
    assert (p.prompt_id, p.question, p.answer) == ("q1", "1+1?", "2")
    with pytest.raises(DataError, match=r"m.jsonl:1: column mapping 'question' -> 'nope'"):
        load_jsonl(f, columns={"question": "nope"})


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "q", "answer": "1"', "invalid JSON"),
    ('{"foo": 1}', "cannot tell the row layout"),
    ('{"question": "", "answer": "1"}', "question text is missing"),
    ('{"question": "q", "answer": "E", "choices": ["a", "b"]}', "must be one of the letters A, B"),
    ('{"problem": "<image> and <image>", "answer": "1", "images": ["p.png"]}', r"2 <image> placeholder\(s\) but the row has 1"),
    ('{"question": "q", "answer": "1", "image": "missing.png"}', "image not found"),
    ('{"question": "q", "answer": [1]}', "'answer' must be a string or number"),
    ('{"id": "a", "question": "q", "answer": "2"}', r"duplicate id 'a' \(first at line 2\)"),
])
def test_malformed_rows_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    png(tmp_path / "p.png")
    f = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "a", "question": "ok", "answer": "1"}', "", line] if "duplicate" not in message
                    else ['{"id": "x", "question": "ok", "answer": "1"}', '{"id": "a", "question": "q", "answer": "1"}', line])
    with pytest.raises(DataError, match=rf"bad.jsonl:3: .*{message}"):
        load_jsonl(f)


def test_skip_invalid_records_reasons(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "s.jsonl", [{"question": "a", "answer": "1"}, {"x": 1}, {"question": "b", "answer": "2"}])
    prompts, summary = load_file(f, skip_invalid=True)
    assert len(prompts) == 2 and [line for line, _ in summary.skipped] == [2]
    assert "skipped 1" in str(summary)
    with pytest.raises(DataError, match="unknown loader option"):
        load_file(f, skip_bad=True)


def test_parquet_and_hf_disk(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"question": ["1+1?", "2+2?"], "answer": ["2", "4"]})
    pq.write_table(table, tmp_path / "train.parquet")
    prompts, _ = load_file(resolve_path(str(tmp_path), "train"))
    assert [p.answer for p in prompts] == ["2", "4"]


def test_hf_save_to_disk_folder_with_image_feature(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import io

    buf = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buf, format="PNG")
    table = pa.table({"problem": ["<image>Count.", "Sum 1 and 2."], "solution": ["3", "3"],
                      "images": [[{"bytes": buf.getvalue(), "path": None}], []]})
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text("{}")
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    prompts, summary = load_file(resolve_path(str(folder), "train"), columns={"answer": "solution"})
    assert summary.rows == 2 and summary.images == 1 and prompts[0].images[0].size == (7, 5)
    assert prompts[1].prompt_id == "saved-2"


def test_corrupt_or_truncated_image_fails_at_load_naming_the_line(tmp_path: Path) -> None:
    good = png(tmp_path / "good.png", (64, 64))
    (tmp_path / "half.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for bad in ("half.png", "junk.png"):
        f = write_jsonl(tmp_path / f"{bad}.jsonl", [
            {"id": "a", "question": "How many?", "answer": "1", "image": "good.png"},
            {"id": "b", "question": "How many?", "answer": "2", "image": bad}])
        with pytest.raises(DataError, match=rf"{f}:2: corrupt image .*{bad}"):
            load_file(f)


def _source(tmp_path: Path, rows: list[object], **params: object):
    from reinforced.data.sources import build_sources

    f = write_jsonl(tmp_path / "rows.jsonl", rows)
    return f, build_sources([DataSource(path=str(f), params=dict(params))], seed=0)


def test_rows_without_gold_for_an_accuracy_reward_fail_naming_file_line(tmp_path: Path) -> None:
    from reinforced.config import RewardTerm
    from reinforced.data.checks import check_gold

    terms = (RewardTerm(name="math_answer", accuracy=True),)
    sets = {"fmt": (RewardTerm(name="format"),)}
    f, sources = _source(tmp_path, [
        {"question": "1+1?", "answer": "2"},
        {"question": "no gold here"},                                    # line 2: scored by math_answer
        {"question": "only format", "reward_set": "fmt"},                # no accuracy term: no gold needed
        {"question": "boxes", "meta": {"boxes": [[0, 0, 1, 1]]}},        # gold in metadata
    ])
    with pytest.raises(DataError, match=rf"1 row\(s\) have no gold answer .*{f}:2: 'rows-2' \(scored by math_answer\)"):
        check_gold(sources, terms, sets)
    _, fine = _source(tmp_path, [{"question": "1+1?", "answer": "2"}, {"question": "x", "reward_set": "fmt"}])
    check_gold(fine, terms, sets)
    _, unknown = _source(tmp_path, [{"question": "1+1?", "answer": "2", "reward_set": "mathh"}])
    with pytest.raises(DataError, match=r"not defined \(defined: fmt.*rows.jsonl:1: reward_set 'mathh'$"):
        check_gold(unknown, terms, sets)


def test_over_long_prompts_fail_at_load_naming_file_line_and_length(tmp_path: Path) -> None:
    from reinforced.data.checks import check_prompt_lengths
    from reinforced.data.sources import build_sources

    f, sources = _source(tmp_path, [{"question": "short", "answer": "1"},
                                    {"question": "word " * 50, "answer": "1"},
                                    {"question": "word " * 9, "answer": "1"}])
    calls: list[str] = []

    def num_tokens(prompt) -> int:  # one "token" per word, counted once per row
        calls.append(prompt.prompt_id)
        return len(prompt.question.split())

    with pytest.raises(DataError, match=rf"1 row\(s\) .*max_prompt_tokens=10.*: {f}:2: 'rows-2' is 50 tokens$"):
        check_prompt_lengths(sources, num_tokens, max_tokens=10)
    assert calls == ["rows-1", "rows-2", "rows-3"]
    # A procedural source is checked on a sample and named by its sample id.
    tasks = build_sources([DataSource(task="arithmetic")], seed=0)
    with pytest.raises(DataError, match=r"4 row\(s\).*: arithmetic sample arithmetic/open/train-s0/0: .* is \d+ tokens"):
        check_prompt_lengths(tasks, lambda p: len(p.question), max_tokens=1, sample_size=4)
    check_prompt_lengths(tasks, lambda p: len(p.question), max_tokens=10_000, sample_size=4)
