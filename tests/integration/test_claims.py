"""The claims suite's machinery (reinforced/claims): a tiny two-arm claim on tiny-qwen2 run for real (2 seeds x
2 steps), its pairing, resume, plot, metrics.json and table; the decision rule on synthetic values; and every
registered claim's arms load as valid configs. The claims themselves run in ``reinforced bench claims``."""

import json
import math

import pytest
from PIL import Image

from reinforced.claims import CLAIMS, Arm, Claim, Measure, decide, effects, run_suite
from reinforced.claims.runner import RunRecord, arm_config, select
from reinforced.cli import main

TINY = Claim(
    name="tiny_lr", paper="a test", arxiv="0000.00000", statement="A larger step moves the policy further.",
    source="tests", config=None,
    base=("model.name_or_path=tiny-qwen2", "data.train=[{task: arithmetic}]", "data.template=plain",
          "eval.sets=[{task: arithmetic, limit: 4}]", "eval.max_prompts=4", "rollout.group_size=4",
          "rollout.max_new_tokens=8", "training.num_prompts=2", "training.micro_batch_size=8",
          "training.max_steps=2", "run.num_threads=1", "algorithm.kl.coef=0.04",
          "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}"),
    arms=(Arm("small", ("training.lr=1e-5",)), Arm("large", ("training.lr=1e-2",))),
    measures=(Measure("rollout/completion_len", "completion length", 1, "mean"),
              Measure("train/lr", "learning rate", 1, "final")),
    seeds=(0, 1),
)


def test_tiny_claim_runs_pairs_and_writes_plot_table_and_metrics(tmp_path):
    calls = []

    from reinforced.training.loop import fit

    def counting_fit(cfg, resume=False, show_progress=True):
        calls.append((cfg.run.name, cfg.training.lr, cfg.run.seed))
        return fit(cfg, resume=resume, show_progress=show_progress)

    table = run_suite(["tiny_lr"], out=tmp_path, claims=[TINY], fit=counting_fit, log=lambda s: None)
    # every arm at every seed, each with its own seed and the arm's knob
    assert sorted(calls) == [("seed-0", 1e-5, 0), ("seed-0", 1e-2, 0), ("seed-1", 1e-5, 1), ("seed-1", 1e-2, 1)]
    runs = tmp_path / "tiny_lr" / "runs"
    for arm in ("small", "large"):
        for seed in (0, 1):
            assert (runs / arm / f"seed-{seed}" / "claim_run.json").is_file()
            assert (runs / arm / f"seed-{seed}" / "metrics.jsonl").is_file()

    payload = json.loads((tmp_path / "tiny_lr" / "metrics.json").read_text())
    assert {(r["arm"], r["seed"]) for r in payload["runs"]} == {("small", 0), ("small", 1), ("large", 0), ("large", 1)}
    # the effect is the mean of the per-seed paired differences of the measures read from metrics.jsonl
    by = {(r["arm"], r["seed"]): r["measures"] for r in payload["runs"]}
    for eff in payload["effects"]:
        diffs = [by[("large", s)][eff["measure"]] - by[("small", s)][eff["measure"]] for s in (0, 1)]
        assert eff["mean"] == pytest.approx(sum(diffs) / 2)
        assert eff["num_seeds"] == 2
        assert eff["verdict"] == decide(diffs, 1).verdict
    lr = next(e for e in payload["effects"] if e["measure"] == "train/lr:final")  # the knob, read back per run
    assert (lr["control_mean"], lr["treatment_mean"]) == pytest.approx((1e-5, 1e-2))
    assert lr["mean"] == pytest.approx(1e-2 - 1e-5) and lr["verdict"] == "agree"  # sd 0: the interval is a point

    with Image.open(tmp_path / "tiny_lr" / "tiny_lr.png") as img:
        img.load()
        assert img.size[0] > 500 and img.size[1] > 200
    lines = table.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| tiny_lr |")]
    assert len(rows) == 2 and all("0000.00000" in r and "large: " in r and "small: " in r for r in rows)
    assert any(r.endswith("**agree** |") and "learning rate (`train/lr:final`)" in r for r in rows)
    assert "![tiny_lr](tiny_lr/tiny_lr.png)" in table.read_text()

    # resumable: finished arm/seed runs are reused, not re-run; the table is rebuilt the same
    calls.clear()
    again = run_suite(["tiny_lr"], out=tmp_path, claims=[TINY], fit=counting_fit, log=lambda s: None)
    assert calls == [] and again.read_text() == table.read_text()
    # a run that stopped before its first checkpoint (no marker) is run again; the others are not
    (runs / "large" / "seed-1" / "claim_run.json").unlink()
    run_suite(["tiny_lr"], out=tmp_path, claims=[TINY], fit=counting_fit, log=lambda s: None)
    assert calls == [("seed-1", 1e-2, 1)]
    with pytest.raises(ValueError, match="holds a full run"):
        run_suite(["tiny_lr"], out=tmp_path, claims=[TINY], quick=True, fit=counting_fit, log=lambda s: None)


@pytest.mark.parametrize(("treatment", "direction", "verdict"), [
    ([0.5, 0.6, 0.55], 1, "agree"),          # consistent effect on the predicted side
    ([0.5, 0.6, 0.55], -1, "disagree"),      # consistent, other side
    ([-0.2, -0.25, -0.3], -1, "agree"),
    ([0.5, -0.4, 0.1], 1, "inconclusive"),   # the interval holds 0
    ([0.0, 0.0, 0.0], 1, "inconclusive"),    # no effect
    ([0.5], 1, "inconclusive"),              # one seed: no spread
])
def test_decision_rule_on_synthetic_values(treatment, direction, verdict):
    claim = Claim(name="c", paper="p", arxiv="1", statement="s", source="t",
                  arms=(Arm("a"), Arm("b")), measures=(Measure("m", "m", direction, "final"),))
    records = [RunRecord("a", s, None, {"m:final": 1.0}, [], 0.0) for s in range(len(treatment))]
    records += [RunRecord("b", s, None, {"m:final": 1.0 + d}, [], 0.0) for s, d in enumerate(treatment)]
    (row,) = effects(claim, records)
    assert row.effect.verdict == verdict
    assert row.effect.mean == pytest.approx(sum(treatment) / len(treatment))
    if len(treatment) == 3 and verdict != "inconclusive":
        sd = math.sqrt(sum((d - row.effect.mean) ** 2 for d in treatment) / 2)
        assert row.effect.high - row.effect.low == pytest.approx(2 * 4.303 * sd / math.sqrt(3))


def test_pairing_uses_only_seeds_both_arms_have():
    claim = Claim(name="c", paper="p", arxiv="1", statement="s", source="t",
                  arms=(Arm("a"), Arm("b")), measures=(Measure("m", "m", 1, "final"),))
    records = [RunRecord("a", 0, None, {"m:final": 0.0}, [], 0.0), RunRecord("a", 1, None, {"m:final": 0.0}, [], 0.0),
               RunRecord("b", 1, None, {"m:final": 2.0}, [], 0.0), RunRecord("b", 2, None, {"m:final": 9.0}, [], 0.0)]
    (row,) = effects(claim, records)
    assert row.effect.num_seeds == 1 and row.effect.mean == 2.0 and row.effect.verdict == "inconclusive"


def test_measures_reduce_rows():
    rows = [{"step": 0, "eval/x/accuracy": 0.1}, {"step": 1, "n": 4.0, "len": 10.0}, {"step": 2, "n": 6.0, "len": 20.0},
            {"step": 3, "len": 40.0}, {"step": 3, "eval/x/accuracy": 0.6}]
    assert Measure("len", "l", 1, "tail_mean").of(rows) == 30.0
    assert Measure("len", "l", 1, "mean").of(rows) == pytest.approx(70 / 3)
    assert Measure("eval/x/accuracy", "g", 1, "gain").of(rows) == pytest.approx(0.5)
    assert Measure("eval/x/accuracy", "g", 1, "gain", per="n").of(rows) == pytest.approx(0.05)
    assert Measure("absent", "a", 1).of(rows) is None


def test_every_registered_claim_loads_in_both_modes(tmp_path):
    for claim in CLAIMS:
        assert claim.arxiv and claim.statement and claim.statement.count(". ") == 0, claim.name  # one sentence
        assert len(set(claim.quick_seeds)) >= 3 and len(set(claim.seeds)) >= 3
        for arm in claim.arms:
            full, quick = (arm_config(claim, arm, 0, tmp_path, q) for q in (False, True))
            if not full.stages:
                assert quick.training.max_steps < full.training.max_steps, (claim.name, arm.name)


def test_bad_names_and_arms_are_clear_errors(tmp_path, capsys):
    with pytest.raises(KeyError, match="unknown claim 'nope'; valid: dr_grpo_length"):
        select(CLAIMS, ["nope"])
    assert main(["bench", "claims", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown claim 'nope'" in capsys.readouterr().out
    with pytest.raises(ValueError, match="control and at least one treatment"):
        Claim(name="c", paper="p", arxiv="1", statement="s", source="t", arms=(Arm("a"),),
              measures=(Measure("m", "m", 1),))
