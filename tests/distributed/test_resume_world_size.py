"""End to end through the CLI: ``torchrun --nproc-per-node 2 -m reinforced train`` (ddp, then fsdp2) and a
one-process ``fit`` take turns on one run directory, each resuming the other's checkpoint, and every
checkpoint equals the one an uninterrupted single-process run wrote at the same step.

    steps 1-2: torchrun, 2 processes, training.strategy=ddp      (ddp save -> single load)
    steps 3-4: one process, fit(..., resume=True)                (single save -> fsdp2 load)
    steps 5-6: torchrun, 2 processes, training.strategy=fsdp2    (fsdp2 save: weights and gathered AdamW state)

Evaluation before (2 ranks, ddp) and after (2 ranks, fsdp2) training is split between the ranks and gathered;
its metrics equal the single process's.

The math allows equality because rollouts do not depend on how prompts are split between ranks:
``rollout.top_k=1`` decodes greedily (the sampling RNG draws from a point mass), and the reward depends on
the prompt only (a file reward), so REINFORCE++'s batch-wide whitening still gives non-zero advantages; the
sampler is sharded (data/samplers.py ShardedSampler), so every world size draws the same global prompts.
Tolerance: 1e-4 on weights that move by ~4e-2. AdamW steps every element by about lr whatever its gradient's
size, so rounding differences between summing over 1 or 2 ranks show in elements whose gradient is near
zero; the AdamW moments FSDP2 gathers agree to 0.2% of each tensor's largest entry.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reinforced.config import load_config
from reinforced.training.loop import fit

REWARD = '''
def by_prompt(completion, prompt, **params):
    """A reward of the prompt alone (greedy completions of a random model are all alike)."""
    return (sum(map(ord, prompt.question)) % 5) / 4
'''

ARGS = [
    "model.name_or_path=tiny-qwen2", "data.train=[{task: arithmetic}]", "data.template=plain",
    "rollout.group_size=2", "rollout.max_new_tokens=6", "rollout.top_k=1", "training.num_prompts=4",
    "training.micro_batch_size=3", "training.lr=0.01", "training.report_to=[]", "run.num_threads=1",
    "algorithm.preset=reinforce_pp", "training.checkpoint_every=2", "training.keep_checkpoints=3",
    "rewards.sets={arithmetic: [{name: reward.py:by_prompt, accuracy: true}]}",
    "eval.sets=[{task: arithmetic, limit: 5}]",  # 5 prompts: uneven shares (3 + 2) when 2 ranks evaluate
]


def _torchrun(tmp: Path, strategy: str, max_steps: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "reinforced", "train", *ARGS, f"run.output_dir={tmp}", "run.name=chain",
           f"training.strategy={strategy}", f"training.max_steps={max_steps}", "--no-progress", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REINFORCED_BACKEND": "gloo"}
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun {strategy} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def _fit(tmp: Path, name: str, max_steps: int, resume: bool) -> None:
    fit(load_config(None, [*ARGS, f"run.output_dir={tmp}", f"run.name={name}", f"training.max_steps={max_steps}"]),
        resume=resume, show_progress=False)


def _checkpoint(tmp: Path, name: str, step: int) -> tuple[dict[str, torch.Tensor], dict]:
    folder = tmp / name / "checkpoints" / f"step-{step}"
    return load_file(folder / "model" / "model.safetensors"), torch.load(folder / "trainer_state.pt",
                                                                         weights_only=False)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest element difference, attention key biases left out: their gradient is zero in exact arithmetic
    (softmax ignores a shift shared by all keys), so it is pure rounding noise, which AdamW's per-element
    normalisation g / (sqrt(v) + eps) turns into steps of up to lr whose sign depends on summation order."""
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if not k.endswith("k_proj.bias"))


def test_resume_across_world_sizes_matches_one_process(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    (tmp_path / "reward.py").write_text(REWARD)
    monkeypatch.chdir(tmp_path)  # reward.py is found relative to the working directory
    _fit(tmp_path, "one", 6, resume=False)  # the uninterrupted single-process reference

    _torchrun(tmp_path, "ddp", 2)
    _fit(tmp_path, "chain", 4, resume=True)
    _torchrun(tmp_path, "fsdp2", 6)

    initial = _checkpoint(tmp_path, "one", 2)[0]
    for step in (2, 4, 6):
        (want, want_state), (got, got_state) = _checkpoint(tmp_path, "one", step), _checkpoint(tmp_path, "chain", step)
        assert _max_diff(want, got) < 1e-4, f"step {step}: weights differ from one process"
        assert got_state["sampler"] == want_state["sampler"], f"step {step}: sampler state differs"
        assert got_state["scheduler"] == want_state["scheduler"]
    assert _max_diff(initial, got) > 1e-3, "training did not move the weights: the comparison proves nothing"
    # the AdamW state FSDP2 gathered from the shards at step 6 is the single process's, tensor by tensor
    want_opt, got_opt = want_state["optimizer"]["state"], got_state["optimizer"]["state"]
    assert want_opt.keys() == got_opt.keys()
    for i, s in want_opt.items():
        for k, v in s.items():
            if v.dim():  # moments within 0.2% of the tensor's largest entry (measured: 2e-4)
                scale = float(v.abs().max())
                assert float((got_opt[i][k] - v).abs().max()) <= 2e-3 * scale, f"optimizer {i}.{k}"
            else:
                assert float(got_opt[i][k]) == float(v), f"optimizer {i}.{k}"  # the step count
    rows = [json.loads(x) for x in (tmp_path / "chain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]  # each step logged once
    # evaluation split between the ranks (ddp before training, fsdp2 after) and gathered = one process's
    evals = {name: {r["step"]: r for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
                    if "eval/arithmetic/accuracy" in r} for name in ("one", "chain")}
    for step in (0, 6):
        want_eval = {k: v for k, v in evals["one"][step].items() if k.startswith("eval/")}
        assert {k: evals["chain"][step][k] for k in want_eval} == pytest.approx(want_eval, abs=1e-9), step
    assert 0 < evals["one"][0]["eval/arithmetic/accuracy"] < 1  # partial scores: a lost prompt would show
    assert (tmp_path / "chain" / "export" / "model.safetensors").exists()
