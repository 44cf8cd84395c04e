"""``reinforced report RUN``: one self-contained ``report.html`` (no network, no CDN) of a run directory.

Curves: reward (mean and components), accuracy (train and held-out), completion lengths of correct and
wrong answers, entropy, KL, clip fractions and dynamic-sampling rounds, drawn as inline SVG from
metrics.jsonl. Rollout browser: the samples/step-N.jsonl rows of one step at a time with the prompt's images
(base64 data URIs), prompt, completion, reward and its components, advantage and what the update did with
the sample, filtered by correct / wrong / truncated / reward failed (a few lines of vanilla JS; the URL hash
``#step=N&show=wrong`` selects them too, so a link or a headless browser opens a given view).

Why our own: a report that must open offline from one file rules out plotting libraries loaded from a CDN,
and matplotlib's PNGs (plots/) cannot carry per-point tooltips; SVG polylines need about forty lines here.
All text is HTML-escaped (prompts and completions hold tags such as ``<answer>``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from reinforced.tracking.sinks import read_metrics

NOT_REWARD_TERMS = {"reward/mean", "reward/std", "reward/errors", "reward/error_frac", "reward/frac_zero_std_groups"}

# (id, title, which metric keys it draws)
CHARTS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("reward", "reward (mean and components)",
     lambda k: k == "reward/mean" or (k.startswith("reward/") and k not in NOT_REWARD_TERMS)),
    ("accuracy", "accuracy (train; held-out eval/*)",
     lambda k: k == "accuracy/mean" or (k.startswith("eval/") and k.endswith("/accuracy"))),
    ("lengths", "completion length, correct vs wrong (tokens)",
     lambda k: k in ("rollout/completion_len", "rollout/completion_len_correct", "rollout/completion_len_wrong")),
    ("entropy", "policy entropy (nats/token)", lambda k: k == "train/entropy"),
    ("kl", "KL", lambda k: k.startswith("train/") and "kl" in k.split("/", 1)[1]),
    ("clip", "clip fractions", lambda k: k.startswith("train/") and "clip_frac" in k),
    ("filter", "dynamic sampling: rounds and groups",
     lambda k: k in ("filter/rounds", "filter/kept_groups", "filter/missing_groups", "filter/num_drawn")),
)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H, PAD = 460, 230, 44  # chart size and the margin that holds the axis labels


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no metrics.jsonl")
    rows = read_metrics(run_dir)
    steps = sample_steps(run_dir)
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    algorithm = (run_dir / "algorithm.txt").read_text() if (run_dir / "algorithm.txt").exists() else ""
    body = "".join([
        f"<h1>{escape(run_dir.name)}</h1>",
        f"<details><summary>config</summary><pre>{escape(config)}</pre></details>" if config else "",
        f"<details><summary>algorithm</summary><pre>{escape(algorithm)}</pre></details>" if algorithm else "",
        '<h2>curves</h2><div class="charts">', *(chart(cid, title, rows, pick) for cid, title, pick in CHARTS),
        "</div>", browser(run_dir, steps),
    ])
    out = run_dir / "report.html"
    out.write_text(PAGE.format(title=escape(f"reinforced: {run_dir.name}"), css=CSS, body=body, js=JS))
    return out


def series(rows: Sequence[Mapping[str, Any]], pick: Callable[[str], bool]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) points of every key ``pick`` accepts; null values (NaN when logged) are left out.

    >>> series([{"step": 1, "a": 2.0, "b": None}, {"step": 2, "a": 3.0}], lambda k: k in "ab")
    {'a': [(1, 2.0), (2, 3.0)]}
    """
    keys = sorted({k for r in rows for k in r if k != "step" and pick(k)})
    out = {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k) is not None] for k in keys}
    return {k: v for k, v in out.items() if v}


def chart(cid: str, title: str, rows: Sequence[Mapping[str, Any]], pick: Callable[[str], bool]) -> str:
    """One inline SVG line chart with a legend; each point has a tooltip (``<title>``) with its value."""
    lines = series(rows, pick)
    head = f'<figure class="chart" data-chart="{cid}"><figcaption>{escape(title)}</figcaption>'
    if not lines:
        return head + '<p class="empty">not logged in this run</p></figure>'
    xs = [x for pts in lines.values() for x, _ in pts]
    ys = [y for pts in lines.values() for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return PAD + (x - x0) / max(1, x1 - x0) * (W - PAD - 10)

    def sy(y: float) -> float:
        return H - PAD + 10 - (y - y0) / (y1 - y0) * (H - PAD - 10)

    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">',
             f'<rect x="{PAD}" y="10" width="{W - PAD - 10}" height="{H - PAD - 10}" class="plot"/>']
    # enough significant digits that the three tick labels differ (entropy moves in its 4th digit)
    digits = 3 + max(0, math.ceil(math.log10(max(abs(y0), abs(y1)) / (y1 - y0) + 1e-12)))
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        parts.append(f'<line x1="{PAD}" x2="{W - 10}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
                     f'<text x="{PAD - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.{digits}g}</text>')
    parts.append(f'<text x="{PAD}" y="{H - PAD + 26}">step {x0}</text>'
                 f'<text x="{W - 10}" y="{H - PAD + 26}" text-anchor="end">step {x1}</text>')
    for i, (key, pts) in enumerate(lines.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline data-key="{escape(key)}" points="{coords}" stroke="{color}"/>')
        parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}">'
                     f"<title>{escape(key)} step {x}: {y:.4g}</title></circle>" for x, y in pts)
    parts.append("</svg>")
    legend = "".join(f'<li><span style="background:{COLORS[i % len(COLORS)]}"></span>{escape(k)}</li>'
                     for i, k in enumerate(lines))
    return head + "".join(parts) + f'<ul class="legend">{legend}</ul></figure>'


def sample_steps(run_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """The rows of every ``samples/step-N.jsonl``, by step."""
    out = {}
    for path in sorted((run_dir / "samples").glob("step-*.jsonl")):
        step = int(path.stem.split("-")[1])
        out[step] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def verdict(sample: Mapping[str, Any]) -> str:
    """``correct`` / ``wrong`` / ``failed`` (the reward raised: accuracy null).

    >>> [verdict({"accuracy": a}) for a in (1.0, 0.0, None)]
    ['correct', 'wrong', 'failed']
    """
    acc = sample.get("accuracy")
    return "failed" if acc is None else "correct" if acc >= 0.5 else "wrong"


def shown(text: str | None) -> str:
    """HTML-escaped text with control characters made visible (a random model emits them).

    >>> shown("<answer>3</answer>\\x07")
    '&lt;answer&gt;3&lt;/answer&gt;\\\\x07'
    """
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text or "")
    return escape(text)


def image_uri(ref: str, samples_dir: Path, cache: dict[str, str]) -> str | None:
    """A data URI of a sample's image (a thumbnail, at most 256 px a side); None when the file is gone."""
    if ref not in cache:
        from PIL import Image

        path = next((p for p in (samples_dir / ref, Path(ref)) if p.is_file()), None)
        if path is None:
            return None
        with Image.open(path) as image:
            image.thumbnail((256, 256))
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
        cache[ref] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return cache[ref]


def fmt(x: Any) -> str:
    return "—" if x is None else f"{x:.4g}" if isinstance(x, float) else escape(str(x))


def sample_row(step: int, i: int, s: Mapping[str, Any], samples_dir: Path, cache: dict[str, str]) -> str:
    images = []
    for ref in s.get("images", []):
        uri = image_uri(ref, samples_dir, cache)
        images.append(f'<img src="{uri}" alt="{escape(ref)}">' if uri else f"<em>missing {escape(ref)}</em>")
    components = "".join(f"<li>{escape(k)}: {fmt(v)}</li>" for k, v in s.get("components", {}).items())
    errors = "".join(f"<li class='error'>{shown(e)}</li>" for e in s.get("reward_errors", []))
    truncated = s.get("finish_reason") == "length"
    return (f'<tr class="sample" data-step="{step}" data-verdict="{verdict(s)}" '
            f'data-truncated="{str(truncated).lower()}"><td>{i}</td><td class="images">{"".join(images)}</td>'
            f'<td><div class="prompt">{shown(s.get("question"))}</div>'
            f'<div class="gold">gold: {shown(str(s.get("answer")))}</div></td>'
            f'<td><pre class="completion">{shown(s.get("completion"))}</pre></td>'
            f'<td class="num">{fmt(s.get("reward"))}<ul>{components}{errors}</ul></td>'
            f'<td class="num">{fmt(s.get("advantage"))}</td>'
            f'<td>{verdict(s)}{" / truncated" if truncated else ""}<br>{fmt(s.get("outcome"))}<br>'
            f'{fmt(s.get("num_tokens"))} tokens</td></tr>')


def browser(run_dir: Path, steps: Mapping[int, list[dict[str, Any]]]) -> str:
    """The rollout browser: a step selector, a filter, and one table row per saved sample."""
    if not steps:
        return "<h2>rollouts</h2><p class='empty'>no samples saved (training.samples_per_step=0)</p>"
    cache: dict[str, str] = {}
    last = max(steps)  # the browser opens on the latest step
    options = "".join(f'<option value="{s}"{" selected" if s == last else ""}>{s}</option>' for s in steps)
    rows = "".join(sample_row(step, i, s, run_dir / "samples", cache)
                   for step, samples in steps.items() for i, s in enumerate(samples))
    return ('<h2>rollouts</h2><div class="controls"><label>step <select id="step">' + options + "</select></label>"
            '<label>show <select id="show"><option value="all">all</option><option value="correct">correct</option>'
            '<option value="wrong">wrong</option><option value="truncated">truncated</option>'
            '<option value="failed">reward failed</option></select></label><span id="count"></span></div>'
            '<table id="rollouts"><thead><tr><th>#</th><th>image</th><th>prompt</th><th>completion</th>'
            "<th>reward (components)</th><th>advantage</th><th>verdict / outcome</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


CSS = """body{font:14px system-ui,sans-serif;margin:20px;color:#222}h1{font-size:20px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{margin:0;border:1px solid #ddd;padding:6px;background:#fff}
figcaption{font-weight:600}.plot{fill:#fafafa;stroke:#bbb}.grid{stroke:#e4e4e4}svg text{font-size:10px;fill:#555}
polyline{fill:none;stroke-width:1.6}.legend{list-style:none;padding:0;margin:4px 0;font-size:11px}
.legend li{display:inline-block;margin-right:10px}.legend span{display:inline-block;width:10px;height:10px;margin-right:4px}
.empty{color:#999}.controls{margin:8px 0}.controls label{margin-right:16px}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:4px;vertical-align:top;text-align:left}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-height:300px;overflow:auto}.gold{color:#666;font-size:12px}
.num{font-family:monospace}td ul{margin:2px 0;padding-left:14px;font-size:12px}.error{color:#b00}
tr[data-verdict=correct]{background:#f1fbf1}tr[data-verdict=failed]{background:#fdf0f0}img{max-width:160px;min-width:64px;image-rendering:pixelated}"""

JS = """(function () {
  var step = document.getElementById("step"), show = document.getElementById("show");
  if (!step) return;
  function apply() {
    var shownRows = 0, total = 0;
    document.querySelectorAll("tr.sample").forEach(function (r) {
      var inStep = r.dataset.step === step.value;
      var match = show.value === "all" || (show.value === "truncated" ? r.dataset.truncated === "true"
                                                                      : r.dataset.verdict === show.value);
      r.hidden = !(inStep && match);
      if (inStep) total++;
      if (!r.hidden) shownRows++;
    });
    document.getElementById("count").textContent = "showing " + shownRows + " of " + total + " samples";
    history.replaceState(null, "", "#step=" + step.value + "&show=" + show.value);
  }
  var hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("step")) step.value = hash.get("step");
  if (hash.get("show")) show.value = hash.get("show");
  step.onchange = show.onchange = apply;
  apply();
})();"""

PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>{css}</style></head><body>{body}<script>{js}</script></body></html>
"""
