"""Runs that survive faults: resume equality for every model family, kills (SIGKILL / SIGINT / SIGTERM) at
several points of a real trainer process, non-finite gradients, corrupt and half-written checkpoints, disk
full, two processes on one run directory, the metrics history on resume, and failing rewards."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reinforced.config import load_config
from reinforced.models.tiny_vlm import TINY_VLM_FAMILIES, build_tiny_vlm
from reinforced.training import checkpoint as ckpt
from reinforced.training.loop import RewardFailure, fit
from reinforced.training.setup import RunLocked, lock_run_dir

TEXT = [
    "data.train=[{task: arithmetic}]", "data.template=plain", "eval.sets=[]", "rollout.group_size=4",
    "rollout.max_new_tokens=8", "training.num_prompts=2", "training.micro_batch_size=4", "training.lr=0.01",
    "training.tensorboard=false", "training.keep_checkpoints=10", "model.name_or_path=tiny-qwen2",
    "run.num_threads=1",
    "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}",
]
VLM = [
    "data.train=[{task: count_shapes, params: {image_size: 32, difficulty: 0.6}}]", "data.template=plain",
    "eval.sets=[]", "rollout.group_size=4", "rollout.max_new_tokens=8", "training.num_prompts=2",
    "training.micro_batch_size=4", "training.lr=0.01", "training.tensorboard=false", "run.num_threads=1",
    "rewards.sets={count_shapes: [{name: count, accuracy: true, params: {partial: true, fallback: last_number}},"
    " {name: kimi_length}]}",
]


def config(tmp_path, name, *extra, base=TEXT):
    return load_config(None, [*base, f"run.output_dir={tmp_path}", f"run.name={name}", *extra])


def weights(run_dir, step):
    out = {}
    for f in sorted((Path(run_dir) / "checkpoints" / f"step-{step}" / "model").glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 4-step text run every fault is compared with."""
    tmp = tmp_path_factory.mktemp("straight")
    return fit(config(tmp, "straight", "training.max_steps=4", "training.checkpoint_every=1"),
               show_progress=False).run_dir


@pytest.mark.parametrize("family", ["tiny-qwen2", *TINY_VLM_FAMILIES.names()])
def test_resume_equals_uninterrupted_for_every_family(tmp_path, family):
    if family == "tiny-qwen2":
        model, base = "tiny-qwen2", TEXT
    else:
        model, base = str(build_tiny_vlm(family, tmp_path / "model")), VLM
    common = [f"model.name_or_path={model}", "training.checkpoint_every=1"]
    a = fit(config(tmp_path, "a", *common, "training.max_steps=2", base=base), show_progress=False)
    fit(config(tmp_path, "b", *common, "training.max_steps=1", base=base), show_progress=False)
    b = fit(config(tmp_path, "b", *common, "training.max_steps=2", base=base), resume=True, show_progress=False)
    assert_same(weights(a.run_dir, 2), weights(b.run_dir, 2))
    assert not torch.equal(*(next(iter(weights(a.run_dir, s).values())) for s in (1, 2)))  # it trained


def start_trainer(tmp_path, name, *extra):
    cfg_file = tmp_path / f"{name}.yaml"
    # A generous reward limit: on a loaded machine a timed-out reward would add a warning line to stderr.
    cfg_file.write_text(config(tmp_path, name, "rewards.timeout_s=60", *extra).to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(Path(sys.executable).with_name("reinforced")), "train", str(cfg_file),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc, path, timeout=60.0):
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"timed out waiting for {path}"
        time.sleep(0.01)


@pytest.mark.parametrize(("sig", "point"), [
    (signal.SIGKILL, "checkpoints/step-2.tmp"),  # mid-save: a half-written checkpoint must be ignored
    (signal.SIGINT, "samples/step-000001.jsonl"),
    (signal.SIGTERM, "checkpoints/step-3"),
])
def test_killed_trainer_resumes_to_the_same_parameters(tmp_path, straight, sig, point):
    args = ("training.max_steps=4", "training.checkpoint_every=1")
    proc = start_trainer(tmp_path, "run", *args)
    wait_for(proc, tmp_path / "run" / point)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig, err
        # Besides transformers' shard-writing bars: one clean line, no traceback.
        lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and "model shards" not in x]
        assert len(lines) == 1 and signal.Signals(sig).name in lines[0], err
    found = ckpt.list_checkpoints(tmp_path / "run")
    for path in found:  # every checkpoint left behind is complete and finite
        assert ckpt.read_checkpoint(path).weights
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp")) or sig == signal.SIGKILL
    resumed = fit(config(tmp_path, "run", *args), resume=True, show_progress=False)
    assert_same(weights(straight, 4), weights(resumed.run_dir, 4))
    steps = [json.loads(x)["step"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and all(steps.count(s) == 1 for s in (1, 2, 3))


def test_two_processes_cannot_share_a_run_directory(tmp_path):
    proc = start_trainer(tmp_path, "busy", "training.max_steps=50")
    try:
        wait_for(proc, tmp_path / "busy" / "metrics.jsonl")
        second = start_trainer(tmp_path, "busy", "training.max_steps=50")
        _, err = second.communicate(timeout=60)
        assert second.returncode != 0 and "in use by another training process" in err, err
        assert proc.poll() is None  # the first run goes on
    finally:
        proc.kill()
        proc.wait()
    # In one process as well: a held lock stops fit() before it touches anything.
    held = lock_run_dir(tmp_path / "busy")
    with pytest.raises(RunLocked, match=str(os.getpid())):
        fit(config(tmp_path, "busy", "training.max_steps=1"), resume=True, show_progress=False)
    held.close()


def test_a_run_without_checkpoint_restarts_under_its_name(tmp_path):
    run = tmp_path / "early"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "reward/mean": 0.5}\n{"step": 1, "rew')  # killed early
    (run / "checkpoints" / "step-1.tmp").mkdir(parents=True)
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        fit(config(tmp_path, "early", "training.max_steps=1"), resume=True, show_progress=False)
    shutil_rm = __import__("shutil").rmtree
    shutil_rm(run / "checkpoints")
    fit(config(tmp_path, "early", "training.max_steps=1"), show_progress=False)  # or without --resume
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 1]  # the old history was dropped, not appended to


def poison_gradients(monkeypatch, bad_calls):
    """policy_loss gains sqrt(0) of a parameter-dependent zero: the loss stays finite, its gradient is NaN."""
    import reinforced.training.step as step_mod

    real, calls = step_mod.policy_loss, [0]

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] in bad_calls:
            logprobs = args[1]
            loss = loss + torch.sqrt((logprobs.sum() - logprobs.sum().detach()).abs())
        return loss, stats

    monkeypatch.setattr(step_mod, "policy_loss", poisoned)


def test_nonfinite_gradients_skip_the_update_and_are_counted(tmp_path, straight, monkeypatch):
    poison_gradients(monkeypatch, bad_calls={3})  # two micro-batches per step: step 2, first one
    with pytest.warns(UserWarning, match=r"step 2: skipped 1 optimiser step.*non-finite gradient.*groups"):
        run = fit(config(tmp_path, "nan", "training.max_steps=2", "training.checkpoint_every=1"),
                  show_progress=False).run_dir
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("train/skipped_steps") for r in rows if "train/skipped_steps" in r] == [0.0, 1.0]
    assert_same(weights(run, 1), weights(run, 2))  # nothing was applied at step 2 ...
    assert all(bool(torch.isfinite(v).all()) for v in weights(run, 2).values())  # ... and no NaN saved


def test_consecutive_nonfinite_gradients_stop_the_run(tmp_path, monkeypatch):
    poison_gradients(monkeypatch, bad_calls=set(range(1, 100)))
    with pytest.raises(FloatingPointError, match="2 optimiser steps in a row.*max_consecutive_skips=2"):
        fit(config(tmp_path, "nan", "training.max_steps=4", "training.checkpoint_every=1",
                   "training.max_consecutive_skips=2"), show_progress=False)
    assert ckpt.latest_checkpoint(tmp_path / "nan").name == "step-1"


def test_nonfinite_weights_are_never_saved(tmp_path):
    from reinforced.config import ModelConfig
    from reinforced.models import load_policy

    model = load_policy(ModelConfig(name_or_path="tiny-qwen2")).model
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ckpt.CheckpointError, match="non-finite weights"):
        ckpt.save_checkpoint(tmp_path, 1, model, None, {})
    assert not (tmp_path / "checkpoints" / "step-1").exists()


@pytest.mark.parametrize("broken", ["model/model.safetensors", "trainer_state.pt"])
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, straight, broken):
    args = ("training.max_steps=3", "training.checkpoint_every=1")
    fit(config(tmp_path, "c", *args), show_progress=False)
    bad = tmp_path / "c" / "checkpoints" / "step-3" / broken
    if broken.endswith(".safetensors"):
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated
    else:
        bad.write_bytes(b"\0" * bad.stat().st_size)  # same size, unreadable
    with pytest.warns(UserWarning, match=f"{bad}.*falling back"):
        resumed = fit(config(tmp_path, "c", "training.max_steps=4", "training.checkpoint_every=1"), resume=True,
                      show_progress=False)
    assert_same(weights(straight, 4), weights(resumed.run_dir, 4))


def test_disk_full_during_a_save_leaves_no_tmp_and_keeps_the_previous(tmp_path, monkeypatch):
    fit(config(tmp_path, "full", "training.max_steps=1"), show_progress=False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(ckpt.CheckpointError, match="disk full"):
        fit(config(tmp_path, "full", "training.max_steps=2"), resume=True, show_progress=False)
    assert [p.name for p in (tmp_path / "full" / "checkpoints").iterdir()] == ["step-1"]


def test_failing_rewards_checkpoint_the_true_state_and_write_the_samples(tmp_path, straight, monkeypatch):
    from reinforced.rewards import RewardComposer

    real, calls = RewardComposer.score, [0]

    def score(self, groups):
        scored, stats = real(self, groups)
        calls[0] += 1
        return scored, ({**stats, "reward/error_frac": 1.0} if calls[0] == 3 else stats)

    monkeypatch.setattr(RewardComposer, "score", score)
    with pytest.raises(RewardFailure, match=r"samples/step-000003\.jsonl"):
        fit(config(tmp_path, "r", "training.max_steps=4"), show_progress=False)
    rows = (tmp_path / "r" / "samples" / "step-000003.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 4  # every sample of the failing step
    monkeypatch.setattr(RewardComposer, "score", real)
    resumed = fit(config(tmp_path, "r", "training.max_steps=4"), resume=True, show_progress=False)
    assert_same(weights(straight, 4), weights(resumed.run_dir, 4))  # step 2's checkpoint held the true state


def test_metrics_history_survives_resume(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from reinforced.tracking.sinks import MetricsWriter, read_metrics

    w = MetricsWriter(tmp_path)
    for step in range(1, 5):
        w.log(step, {"reward/mean": float(step)})
    w.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "rew')  # torn by a crash
    with pytest.warns(UserWarning, match="metrics.jsonl: dropped a torn last line"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    before = (tmp_path / "metrics.jsonl").read_text()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError), pytest.warns(UserWarning):
        MetricsWriter(tmp_path, report_to=(), resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == before  # a failed rewrite erases nothing
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="torn"):
        w = MetricsWriter(tmp_path, resume_step=2)
    w.log(3, {"reward/mean": 30.0})
    w.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert math.isfinite(events.Scalars("reward/mean")[-1].value)
