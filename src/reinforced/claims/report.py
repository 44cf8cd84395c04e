"""A claim's results: effects per treatment and measure (metrics.json), one PNG, and the claims.md table.

The plot draws, per measure, each arm's curve over steps as the mean over seeds with the band between the
lowest and highest seed (three seeds: a standard deviation band would pretend to a precision it lacks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reinforced.claims.runner import RunRecord
from reinforced.claims.spec import Claim, Effect, Measure, decide


@dataclass(frozen=True)
class Row:
    """One line of the table: a treatment against the control on one measure."""

    claim: str
    treatment: str
    control: str
    measure: str
    label: str
    direction: int
    control_mean: float
    treatment_mean: float
    effect: Effect


def _mean(values: Sequence[float | None]) -> float:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def effects(claim: Claim, records: Sequence[RunRecord]) -> list[Row]:
    """Paired (by seed) treatment - control differences of every measure, and each one's verdict."""
    by = {(r.arm, r.seed): r.measures for r in records}
    seeds = sorted({r.seed for r in records})
    rows = []
    for arm in claim.treatments:
        for m in claim.measures:
            pairs = [(by[(claim.control.name, s)][m.name], by[(arm.name, s)][m.name]) for s in seeds
                     if (claim.control.name, s) in by and (arm.name, s) in by]
            diffs = [t - c for c, t in pairs if c is not None and t is not None]
            rows.append(Row(claim.name, arm.name, claim.control.name, m.name, m.label, m.direction,
                            _mean([c for c, _ in pairs]), _mean([t for _, t in pairs]), decide(diffs, m.direction)))
    return rows


def write_claim(claim: Claim, records: Sequence[RunRecord], out: Path, quick: bool) -> list[Row]:
    """``<out>/<claim>/metrics.json`` and ``<out>/<claim>/<claim>.png``; returns the table rows."""
    folder = out / claim.name
    folder.mkdir(parents=True, exist_ok=True)
    rows = effects(claim, records)
    payload = {
        "claim": claim.name, "paper": claim.paper, "arxiv": claim.arxiv, "statement": claim.statement,
        "quick": quick, "arms": {a.name: list(a.overrides) for a in claim.arms},
        "runs": [{"arm": r.arm, "seed": r.seed, "run_dir": str(r.run_dir), "wall_s": r.wall_s,
                  "measures": r.measures} for r in records],
        "effects": [{**{k: v for k, v in asdict(row).items() if k != "effect"}, **asdict(row.effect)}
                    for row in rows],
    }
    (folder / "metrics.json").write_text(json.dumps(payload, indent=1, allow_nan=True))
    plot_claim(claim, records, folder / f"{claim.name}.png")
    return rows


def _band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max over seeds at each step that every seed's curve has."""
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves))) if curves else []
    at = [dict(c) for c in curves]
    mean = [sum(a[s] for a in at) / len(at) for s in steps]
    return steps, mean, [min(a[s] for a in at) for s in steps], [max(a[s] for a in at) for s in steps]


def plot_claim(claim: Claim, records: Sequence[RunRecord], path: Path) -> Path:
    """One panel per measure: each arm's mean over seeds against step, shaded from min to max over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(claim.measures), figsize=(5.5 * len(claim.measures), 3.6), squeeze=False)
    for ax, measure in zip(axes[0], claim.measures, strict=True):
        _panel(ax, measure, claim, records)
    fig.suptitle(f"{claim.name}: {claim.paper} (arXiv {claim.arxiv})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _panel(ax: Any, measure: Measure, claim: Claim, records: Sequence[RunRecord]) -> None:
    for arm in claim.arms:
        curves = [c for c in (measure.series(r.rows) for r in records if r.arm == arm.name) if c]
        steps, mean, low, high = _band(curves)
        if not steps:
            continue
        line, = ax.plot(steps, mean, marker="o" if len(steps) < 25 else None, label=f"{arm.name} ({len(curves)} seeds)")
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_title(f"{measure.label}\n({measure.key}, {measure.reduce})", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4g}"


def table(rows_by_claim: Sequence[tuple[Claim, Sequence[Row]]]) -> str:
    """The markdown table of claims.md (one row per treatment x measure)."""
    lines = ["| claim | paper | statement | measured | control -> treatment (mean over seeds) | effect: mean "
             "(sd) [95% t-interval] | seeds | paper predicts | small-scale run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for claim, rows in rows_by_claim:
        for r in rows:
            e = r.effect
            lines.append(
                f"| {claim.name} | {claim.paper}, arXiv {claim.arxiv} | {claim.statement} | {r.label} (`{r.measure}`) "
                f"| {r.control}: {_num(r.control_mean)} -> {r.treatment}: {_num(r.treatment_mean)} "
                f"| {_num(e.mean)} ({_num(e.sd)}) [{_num(e.low)}, {_num(e.high)}] | {e.num_seeds} "
                f"| {'higher' if r.direction > 0 else 'lower'} | **{e.verdict}** |")
    return "\n".join(lines) + "\n"


def write_table(rows_by_claim: Sequence[tuple[Claim, Sequence[Row]]], out: Path, command: str, quick: bool) -> Path:
    """``<out>/claims.md``: how it was made, the table, and each claim's plot."""
    parts = [f"# Claims at small scale{' (--quick)' if quick else ''}\n",
             f"Made by `{command}`. Each effect is treatment - control, paired by seed; the verdict is 'agree' "
             "when the 95 % t-interval over seeds excludes 0 on the side the paper predicts, 'disagree' when it "
             "excludes 0 on the other side, else 'inconclusive' (reinforced/claims/spec.py).\n",
             table(rows_by_claim)]
    parts += [f"\n![{c.name}]({c.name}/{c.name}.png)\n" for c, _ in rows_by_claim]
    path = out / "claims.md"
    path.write_text("\n".join(parts))
    return path
