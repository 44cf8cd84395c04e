"""Two gloo processes on the same global batch give the same parameters after 3 updates as one process, for
ddp and fsdp2: the real ``prepare`` (advantages, global whitening) and ``Updater`` (combined normaliser,
gradient sum, clipping, AdamW) on rollout groups generated once and split by whole groups between ranks.
The text model is tiny-qwen2; the vision-language case is the shipped tiny Qwen2-VL (reinforced-tiny-vlm) on
rendered images, whose vision blocks FSDP2 shards as well (checked)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from reinforced.config import load_config
from reinforced.training.distributed import _is_dtensor

VISION_BLOCK_PARAM = "model.visual.blocks.0.attn.qkv.weight"

BASE = [
    "data.template=plain", "rollout.group_size=4", "rollout.max_new_tokens=8",
    "training.num_prompts=4", "training.micro_batch_size=3", "training.lr=0.01", "training.tensorboard=false",
    "run.num_threads=1",
]
TEXT = ["model.name_or_path=tiny-qwen2", "data.train=[{task: arithmetic}]",
        "rewards.sets={arithmetic: [{name: math_answer, accuracy: true}, {name: kimi_length}]}"]
VLM = ["model.name_or_path=reinforced-tiny-vlm", "data.train=[{task: count_shapes}]",
       "rewards.sets={count_shapes: [{name: count, accuracy: true, params: {partial: true}}, {name: kimi_length}]}"]


def _config(tmp, name, *extra):
    return load_config(None, [*BASE, f"run.output_dir={tmp}", f"run.name={name}", *extra])


def _updates(run, groups, steps=3):
    from reinforced.training.loop import prepare
    for _ in range(steps):
        batch = prepare(run, groups)[0]
        run.updater.update(batch, run.generator)


def _full_params(run):
    run.refresh_rollout()
    return {k: v.detach().clone() for k, v in run.adapter.model.named_parameters()}


def _worker(rank, world, port, tmp, strategy, extra, groups_path, out_path):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    from reinforced.training.setup import setup
    run = setup(_config(tmp, f"dp-{strategy}", f"training.strategy={strategy}", *extra))
    groups = torch.load(groups_path, weights_only=False)
    share = len(groups) // world
    if strategy == "fsdp2" and "model.name_or_path=reinforced-tiny-vlm" in extra:  # vision blocks sharded too
        assert _is_dtensor(run.policy.model.get_parameter(VISION_BLOCK_PARAM)), "vision blocks not sharded"
    _updates(run, groups[rank * share:(rank + 1) * share])
    params = _full_params(run)
    if rank == 0:
        torch.save(params, out_path)
    run.release()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = [
    pytest.param("ddp", TEXT, id="grpo-ddp"), pytest.param("fsdp2", TEXT, id="grpo-fsdp2"),
    pytest.param("ddp", [*TEXT, "algorithm.preset=reinforce_pp"], id="reinforce_pp-ddp"),
    pytest.param("fsdp2", [*TEXT, "algorithm.preset=reinforce_pp"], id="reinforce_pp-fsdp2"),
    pytest.param("ddp", VLM, id="vlm-grpo-ddp"), pytest.param("fsdp2", VLM, id="vlm-grpo-fsdp2"),
]


@pytest.mark.parametrize(("strategy", "extra"), CASES)
def test_two_ranks_match_one(tmp_path, strategy, extra):
    from reinforced.training.loop import collect
    from reinforced.training.setup import setup
    torch.set_num_threads(1)
    run = setup(_config(tmp_path, "single", *extra))
    groups, _ = collect(run, 1)
    torch.save(groups, tmp_path / "groups.pt")
    _updates(run, groups)
    expected = _full_params(run)
    run.release()
    out = tmp_path / "params.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), strategy, extra, tmp_path / "groups.pt", out),
             nprocs=2, join=True)
    got = torch.load(out)
    moved = max(float((expected[k] - v).abs().max()) for k, v in got.items())
    assert moved < 1e-5, f"{strategy}: parameters differ from one process by {moved}"
