"""``reinforced bench claims``: the survey's algorithm claims as small, seeded, repeated experiments (issue 13).

Each claim (``definitions.CLAIMS``) is data: a paper's statement with its arXiv id, arms that differ in one
knob (config overrides), seeds, measures read from each run's metrics.jsonl, the direction the paper predicts,
and a decision rule (``spec.decide``). ``run_suite`` runs the arms one at a time, resumably, and writes
``<out>/<claim>/metrics.json``, ``<out>/<claim>/<claim>.png`` and ``<out>/claims.md``.

    from reinforced.claims import run_suite
    run_suite(["dapo_clip_higher"], out="claims", quick=True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reinforced.claims.definitions import CLAIMS
from reinforced.claims.report import Row, effects, write_claim, write_table
from reinforced.claims.runner import finished, run_claim, select
from reinforced.claims.spec import Arm, Claim, Effect, Measure, decide

__all__ = ["CLAIMS", "Arm", "Claim", "Effect", "Measure", "Row", "decide", "effects", "run_suite"]


def run_suite(names: Sequence[str] = (), out: str | Path = "claims", quick: bool = False,
              seeds: Sequence[int] | None = None, claims: Sequence[Claim] = CLAIMS,
              fit: Callable[..., Any] | None = None, log: Callable[[str], None] = print,
              command: str = "reinforced bench claims") -> Path:
    """Run the claims named (all when empty) and write their results; returns ``<out>/claims.md``.

    The table also lists the other claims of ``claims`` already run under ``out`` (same ``quick``), so
    claims can be run one by one into one table. ``fit`` replaces the trainer (tests).
    """
    out = Path(out)
    chosen = select(claims, names)
    tables: dict[str, tuple[Claim, list[Row]]] = {}
    for claim in chosen:
        log(f"claim {claim.name}: {len(claim.arms)} arms ({', '.join(a.name for a in claim.arms)})")
        records = run_claim(claim, out, quick=quick, seeds=seeds, fit=fit, log=log)
        tables[claim.name] = (claim, write_claim(claim, records, out, quick))
        for row in tables[claim.name][1]:
            log(f"  {row.treatment} vs {row.control}, {row.label}: {row.effect.mean:+.4g} "
                f"[{row.effect.low:.4g}, {row.effect.high:.4g}] -> {row.effect.verdict}")
    for claim in claims:
        if claim.name not in tables and (records := finished(claim, out, quick)):
            tables[claim.name] = (claim, effects(claim, records))
    ordered = [tables[c.name] for c in claims if c.name in tables]
    return write_table(ordered, out, command, quick)
