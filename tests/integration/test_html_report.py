"""`reinforced report RUN` on a real tiny VLM run, opened in headless Chromium (Debian's `chromium`, installed
by `make browser`): the curves are drawn, each saved sample has a row with its image, its completion text
escaped (the DOM text equals the sample's text, tags included), the step and verdict filters show exactly the
matching rows, and a screenshot is a full, non-blank page. Skips only when no browser is installed."""

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from reinforced.cli import main
from reinforced.config import load_config
from reinforced.tracking.html_report import CHARTS
from reinforced.training.loop import fit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (make browser)")
SIZE = (1280, 2200)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cfg = load_config("src/reinforced/configs/tiny_vlm_count_grpo.yaml", [
        "data.train=[{task: count_shapes, params: {image_size: 32}}]", "eval.sets=[]", "rollout.group_size=4",
        "rollout.max_new_tokens=16", "training.num_prompts=2", "training.micro_batch_size=8",
        "training.max_steps=2", "training.samples_per_step=8", "training.report_to=[]",
        "training.warmup_steps=0", f"run.output_dir={out}", "run.num_threads=1"])
    run_dir = fit(cfg, show_progress=False).run_dir
    assert main(["report", str(run_dir)]) in (0, None)
    return run_dir


def samples(run_dir, step):
    return [json.loads(x) for x in (run_dir / "samples" / f"step-{step:06d}.jsonl").read_text().splitlines()]


class Dom(HTMLParser):
    """What the tests read from the browser's DOM: charts, polylines, sample rows and their completion text."""

    def __init__(self, text):
        super().__init__()
        self.charts, self.lines, self.rows, self.count, self._in = [], [], [], "", None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self.charts.append(a["data-chart"])
        elif tag == "polyline":
            self.lines.append((self.charts[-1], a["data-key"]))
        elif tag == "tr" and a.get("class") == "sample":
            self.rows.append({**a, "completion": "", "images": []})
        elif tag == "img" and self.rows:
            self.rows[-1]["images"].append(a["src"])
        elif (tag == "pre" and a.get("class") == "completion") or (tag == "span" and a.get("id") == "count"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "pre":
            self.rows[-1]["completion"] += data
        elif self._in == "span":
            self.count += data


def browse(run_dir, fragment):
    """The DOM after the page's script ran, for the view ``fragment`` selects (``step=2&show=wrong``)."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={run_dir.parent / 'chromium-profile'}", "--dump-dom",
         f"{(run_dir / 'report.html').as_uri()}#{fragment}"],
        capture_output=True, text=True, timeout=120, check=True)
    return Dom(out.stdout)


def visible(dom):
    return [r for r in dom.rows if "hidden" not in r]


def test_samples_carry_advantages_that_are_group_z_scores(run_dir):
    rows = samples(run_dir, 2)
    assert len(rows) == 8 and all(r["outcome"] == "trained" for r in rows)
    for g in range(2):  # GRPO: each group's advantages sum to 0 (zero when its rewards are all equal)
        group = rows[4 * g:4 * g + 4]
        assert sum(r["advantage"] for r in group) == pytest.approx(0.0, abs=1e-5)
        best = max(group, key=lambda r: r["reward"])
        assert best["advantage"] == max(r["advantage"] for r in group)


@needs_browser
def test_report_dom_has_curves_and_a_row_per_sample_with_escaped_text_and_images(run_dir):
    html = (run_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    dom = browse(run_dir, "step=2&show=all")
    assert dom.charts == [cid for cid, _, _ in CHARTS]
    for chart, key in [("reward", "reward/mean"), ("reward", "reward/count"), ("accuracy", "accuracy/mean"),
                       ("lengths", "rollout/completion_len"), ("entropy", "train/entropy"), ("kl", "train/kl_ref"),
                       ("clip", "train/clip_frac_high"), ("filter", "filter/rounds")]:
        assert (chart, key) in dom.lines
    want = samples(run_dir, 1) + samples(run_dir, 2)
    assert len(dom.rows) == len(want) == 16
    assert any("<answer>" in s["completion"] for s in want)  # the texts hold tags: escaping is exercised
    for row, sample in zip(dom.rows, want, strict=True):
        assert row["completion"] == sample["completion"]  # escaped in the file, the same text in the DOM
        assert row["data-verdict"] == ("correct" if sample["accuracy"] >= 0.5 else "wrong")
        (src,) = row["images"]
        assert src.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (32, 32)
    assert [r["data-step"] for r in visible(dom)] == ["2"] * 8 and dom.count == "showing 8 of 8 samples"


@needs_browser
@pytest.mark.parametrize(("step", "show"), [(1, "correct"), (1, "wrong"), (2, "truncated")])
def test_filters_show_exactly_the_matching_rows(run_dir, step, show):
    dom = browse(run_dir, f"step={step}&show={show}")
    rows = samples(run_dir, step)
    match = {"correct": lambda s: s["accuracy"] >= 0.5, "wrong": lambda s: s["accuracy"] < 0.5,
             "truncated": lambda s: s["finish_reason"] == "length"}[show]
    want = [s["completion"] for s in rows if match(s)]
    assert 0 < len(want) < len(rows)  # the seeded run has both kinds in this step: the filter must choose
    assert [r["completion"] for r in visible(dom)] == want
    assert dom.count == f"showing {len(want)} of 8 samples"


@needs_browser
def test_screenshot_is_a_full_non_blank_page(run_dir):
    shot = run_dir.parent / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={run_dir.parent / 'chromium-profile-shot'}", f"--window-size={SIZE[0]},{SIZE[1]}",
         f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == SIZE
    pixels = list(image.getdata())
    ink = sum(p != (255, 255, 255) for p in pixels) / len(pixels)
    assert ink > 0.05, f"only {ink:.1%} of the page is not white"
    assert len(set(pixels)) > 50  # curves in several colours, text, images: not a blank or one-colour page
