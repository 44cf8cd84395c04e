"""Run outputs: metrics.jsonl (one row per step after a resume), samples with their images, plots."""

import json

import pytest
from PIL import Image

from reinforced.tracking.report import plot_run
from reinforced.tracking.sinks import MetricsWriter, read_metrics, write_samples
from reinforced.types import Completion, Prompt, RolloutGroup


def test_metrics_rows_and_truncation_on_resume(tmp_path):
    w = MetricsWriter(tmp_path, report_to=())
    for step in range(1, 5):
        w.log(step, {"reward/mean": step / 10, "train/kl_ref": float("nan")})
    w.truncate_after(2)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["train/kl_ref"] is None  # NaN is written as null: the file stays valid JSON


def test_samples_keep_images_and_reward_components(tmp_path):
    image = Image.new("RGB", (16, 16), (255, 0, 0))
    group = RolloutGroup(
        prompt=Prompt("p0", "How many?", answer="3", images=(image, "images/a.png")),
        completions=(Completion("<answer>3</answer>", (1, 2), (-0.1, -0.2), "stop"),) * 3,
        rewards=(1.0, 1.0, 1.0), accuracy=(1.0, 1.0, 1.0), components={"count": (1.0, 1.0, 1.0)})
    write_samples(tmp_path, 7, [group], limit=2)
    rows = [json.loads(x) for x in (tmp_path / "samples" / "step-000007.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["components"] == {"count": 1.0} and rows[0]["reward"] == 1.0
    saved, given = rows[0]["images"]
    assert given == "images/a.png"
    assert Image.open(tmp_path / "samples" / saved).size == (16, 16)


def test_plots_are_written(tmp_path):
    w = MetricsWriter(tmp_path, report_to=())
    for step in range(3):
        w.log(step, {"reward/mean": step, "accuracy/mean": 0.1 * step, "rollout/completion_len": 5,
                     "train/entropy": 1.0, "eval/x/accuracy": 0.5})
    names = sorted(p.name for p in plot_run(tmp_path))
    assert names == ["accuracy.png", "completion_length.png", "entropy.png", "reward.png"]


def test_progress_without_a_terminal_prints_plain_lines_every_n_steps():
    import io

    from reinforced.tracking.progress import Progress

    out = io.StringIO()  # not a terminal: a CI log, nohup.out, a cluster job's file
    stats = {"reward/mean": 0.5, "accuracy/mean": 0.25, "rollout/completion_len": 12.0, "perf/tokens_per_s": 300.0}
    with Progress(total=7, start=1, every=3, file=out) as progress:
        for step in range(2, 8):
            progress.advance(step, stats)
    lines = out.getvalue().splitlines()
    # Steps 3 and 6 (every 3), and the last step 7; one line each, no bar drawing characters.
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert lines[0].startswith("step 3/7  reward 0.500  acc 0.25  len 12  300 tok/s  ETA ")
    assert all("\r" not in line and "━" not in line for line in lines)


def test_progress_disabled_prints_nothing():
    import io

    from reinforced.tracking.progress import Progress

    out = io.StringIO()
    with Progress(total=4, enabled=False, every=1, file=out) as progress:
        progress.advance(1, {"reward/mean": 1.0})
    assert out.getvalue() == ""


def test_samples_are_valid_json_with_failed_rewards_and_their_error_texts(tmp_path):
    """A failed reward is NaN in memory: the samples file writes null and the error text, line by line JSON."""
    nan = float("nan")
    comps = tuple(Completion(text=t, token_ids=(1,), logprobs=(0.0,), finish_reason="stop") for t in ("a", "b"))
    group = RolloutGroup(Prompt("p0", "q", answer="1"), comps, rewards=(nan, 1.0), accuracy=(nan, 1.0),
                         components={"math_answer": (None, 1.0)}, reward_errors=1,
                         error_texts=(("math_answer: ValueError: boom",), ()))
    write_samples(tmp_path, 3, [group], limit=10)
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
            for line in (tmp_path / "samples" / "step-000003.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in rows] == [None, 1.0]
    assert [r["accuracy"] for r in rows] == [None, 1.0]
    assert [r["reward_errors"] for r in rows] == [["math_answer: ValueError: boom"], []]


def test_html_report_escapes_prompts_and_completions(tmp_path):
    """A prompt that holds a script and tags stays text: the file has no live tag from the sample."""
    from reinforced.tracking.html_report import write_report

    w = MetricsWriter(tmp_path, report_to=())
    w.log(1, {"reward/mean": 0.5, "accuracy/mean": 1.0})
    comps = (Completion("<answer>3</answer></pre><b>x</b>", (1,), (0.0,), "stop"),)
    group = RolloutGroup(Prompt("p0", "<script>alert(1)</script> & 2+1?", answer="<3>"), comps, rewards=(1.0,),
                         accuracy=(1.0,), components={"math_answer": (1.0,)})
    write_samples(tmp_path, 1, [group], limit=1, notes=[{"advantage": 0.0, "outcome": "trained"}])
    html = write_report(tmp_path).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; 2+1?" in html
    assert "&lt;answer&gt;3&lt;/answer&gt;&lt;/pre&gt;&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "gold: &lt;3&gt;" in html and html.count("<script>") == 1  # only the report's own script
