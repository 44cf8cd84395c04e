"""Performance options change memory and time, never the numbers: gradient checkpointing gives the same
logprobs and gradients as the plain forward (fp32), through the training forward the updater uses, for a
text model and a VLM; the config switch reaches the model; a model without support is a clear error. The
reward worker runs with one thread whatever the trainer's environment says."""

import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from reinforced.config import ConfigError, ModelConfig, load_config
from reinforced.models import Adapter, load_policy
from reinforced.models.tiny_vlm import build_tiny_vlm
from reinforced.training.logprobs import completion_logprobs
from reinforced.training.step import checkpointed_layers_on, enable_gradient_checkpointing
from reinforced.types import Prompt


def grads(model, adapter, batch):
    model.zero_grad()
    lp, ent = completion_logprobs(model, adapter, batch, temperature=0.7, with_entropy=True, entropy_grad=True)
    (lp.sum() + 0.1 * ent.sum()).backward()
    return lp.detach(), [(n, p.grad.clone()) for n, p in model.named_parameters() if p.grad is not None]


def assert_checkpointing_equal(model, adapter, batch):
    assert not model.training  # the policy trains in eval mode (no dropout), as in a run
    plain_lp, plain = grads(model, adapter, batch)
    enable_gradient_checkpointing(model)
    assert model.is_activation_checkpointing
    layers = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    with checkpointed_layers_on(model):
        assert all(m.training for m in layers) and not model.training
        assert not any(m.training for layer in layers for m in layer.children())  # dropout stays off
        ckpt_lp, ckpt = grads(model, adapter, batch)
    assert not any(m.training for m in model.modules())  # eval mode restored
    torch.testing.assert_close(ckpt_lp, plain_lp, rtol=0, atol=1e-6)
    assert [n for n, _ in ckpt] == [n for n, _ in plain]
    for (name, a), (_, b) in zip(ckpt, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def saved_and_recomputed(model, adapter, batch):
    """(bytes the forward saves for the backward outside checkpoints, forward calls of a decoder layer's
    attention during the backward) of one grad-enabled training forward + backward."""
    layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
    calls = []
    hook = layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp, _ = completion_logprobs(model, adapter, batch, share_prefix=False)
        forward_calls = len(calls)
        lp.sum().backward()
    finally:
        hook.remove()
    return sum(saved), len(calls) - forward_calls


def test_gradient_checkpointing_recomputes_in_eval_mode(make_batch):
    """The trainer's policy stays in eval mode; the checkpointed layers still recompute in the backward and
    the forward keeps far fewer activations for it."""
    loaded = load_policy(ModelConfig(name_or_path="tiny-qwen2"))
    model, adapter = loaded.model, Adapter(loaded, "plain")
    batch = make_batch(adapter, prompts())
    plain_saved, plain_again = saved_and_recomputed(model, adapter, batch)
    enable_gradient_checkpointing(model)
    eval_saved, eval_again = saved_and_recomputed(model, adapter, batch)  # HF alone: no recompute in eval
    with checkpointed_layers_on(model):
        ckpt_saved, ckpt_again = saved_and_recomputed(model, adapter, batch)
    assert (plain_again, eval_again, ckpt_again) == (0, 0, 1)
    assert eval_saved == plain_saved and ckpt_saved < plain_saved / 2


def prompts():
    return [Prompt("a", "What is 1 + 2?"), Prompt("b", "What is 13 + 27? Explain each step.")]


def test_gradient_checkpointing_text_equal_gradients(make_batch):
    torch.manual_seed(0)
    loaded = load_policy(ModelConfig(name_or_path="tiny-qwen2"))
    adapter = Adapter(loaded, "plain")
    assert_checkpointing_equal(loaded.model, adapter, make_batch(adapter, prompts()))


def test_gradient_checkpointing_vlm_equal_gradients(make_batch, tmp_path):
    from PIL import Image

    build_tiny_vlm("qwen2_vl", tmp_path, seed=0)
    loaded = load_policy(ModelConfig(name_or_path=str(tmp_path)))
    adapter = Adapter(loaded, "plain")
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    batch = make_batch(adapter, [Prompt("a", "<image> How many?", images=(image,)),
                                 Prompt("b", "Count them: <image>", images=(image,))])
    assert_checkpointing_equal(loaded.model, adapter, batch)


def test_gradient_checkpointing_config_reaches_the_model(make_batch, tmp_path, monkeypatch):
    from reinforced.training import allocator
    from reinforced.training import setup as setup_module

    fixed = []
    monkeypatch.setattr(allocator, "fix_mmap_threshold", lambda: fixed.append(1))
    cfg = load_config(None, ["model.name_or_path=tiny-qwen2", "training.gradient_checkpointing=true",
                             f"run.output_dir={tmp_path}", "eval.sets=[]", "training.report_to=[]",
                             "training.release_memory=mmap"])
    run = setup_module.setup(cfg, resume=False)
    assert fixed == [1]  # release_memory=mmap fixes glibc's threshold at start-up
    try:
        model = run.policy.model
        assert model.is_activation_checkpointing and not model.training
        batch = make_batch(Adapter(run.policy, "plain"), prompts())
        batch = replace(batch, advantages=batch.completion_mask.float(), ref_logprobs=batch.old_logprobs)
        layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))
        trunk_calls, attn_calls = [], []
        model.base_model.register_forward_hook(lambda *_: trunk_calls.append(1))
        layer.self_attn.register_forward_hook(lambda *_: attn_calls.append(1))
        run.updater.policy_step(batch)
        assert len(trunk_calls) == 1 and len(attn_calls) == 2  # one forward, recomputed in the backward
        assert not any(m.training for m in model.modules())
    finally:
        run.rewards.close()
        run.release()


def test_gradient_checkpointing_unsupported_model_is_an_error():
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


WORKER_THREADS = textwrap.dedent("""
    import os, torch
    from reinforced.rewards import RewardComposer
    from reinforced.rewards.custom import register_callable
    from reinforced.types import Completion, Prompt, RolloutGroup

    def worker_threads(completion, prompt):
        return float(torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1")

    register_callable(worker_threads)
    group = RolloutGroup(Prompt("q", "Hi"), (Completion("x", (1,), (0.0,), "stop"),))
    with RewardComposer([{"name": "worker_threads"}], timeout_s=60.0) as comp:
        [g], _ = comp.score([group])
    print(torch.get_num_threads(), g.rewards[0])
""")


def test_reward_worker_runs_one_thread_when_the_trainer_has_more():
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", WORKER_THREADS], env={**env, "OMP_NUM_THREADS": "2"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "1.0"]  # the trainer keeps its 2 threads, the worker has 1


FRAGMENT = textwrap.dedent("""
    import sys, torch
    from reinforced.training.allocator import fix_mmap_threshold, release_free_memory

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold()
    big = torch.ones(4 * 2**20)
    del big  # a freed 16 MiB mapping: glibc's dynamic threshold rises to it
    blocks = [torch.ones(2**19) for _ in range(100)]  # 100 x 2 MiB
    before = rss_mib()
    del blocks[::2]  # 100 MiB of holes below live blocks: never trimmed by free() itself
    freed = before - rss_mib()
    trimmed = release_free_memory()
    print(round(freed), round(before - rss_mib()), trimmed)
""")


def fragment(mode):
    out = subprocess.run([sys.executable, "-c", FRAGMENT, mode], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")})
    assert out.returncode == 0, out.stderr[-2000:]
    freed, after_trim, trimmed = out.stdout.split()
    return float(freed), float(after_trim), trimmed == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc (Linux)")
def test_allocator_returns_freed_blocks_to_the_os():
    freed, after_trim, trimmed = fragment("dynamic")
    assert freed < 20 and after_trim > 90 and trimmed  # glibc keeps the holes; malloc_trim returns them
    freed, _, _ = fragment("fixed")
    assert freed > 90  # a fixed threshold: each 2 MiB block was its own mapping, unmapped at free


def test_allocator_is_a_no_op_off_glibc(monkeypatch):
    from reinforced.training import allocator

    allocator._glibc.cache_clear()
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    try:
        assert not allocator.fix_mmap_threshold() and not allocator.release_free_memory()
        assert not allocator.configure_allocator("mmap")
    finally:
        allocator._glibc.cache_clear()
    with pytest.raises(ValueError, match="positive number of bytes"):
        allocator.fix_mmap_threshold(0)
    with pytest.raises(ValueError, match="none, trim or mmap"):
        allocator.configure_allocator("always")


@pytest.mark.parametrize("release", ["trim", "mmap", "none"])
def test_updater_releases_memory_around_the_update(monkeypatch, release):
    from reinforced.algorithms import resolve_spec
    from reinforced.config import TrainingConfig
    from reinforced.training import step

    calls = []
    monkeypatch.setattr(step, "release_free_memory", lambda: calls.append(1))
    model = torch.nn.Linear(2, 2)
    cfg = TrainingConfig(release_memory=release)
    opt, sched = step.build_optimizer(list(model.parameters()), cfg)
    upd = step.Updater(spec=resolve_spec("grpo", {}), cfg=cfg, model=model, optimizer=opt, scheduler=sched,
                       logprob_fn=None)
    upd.update(None, torch.Generator(), train_policy=False)
    assert len(calls) == (0 if release == "none" else 2)  # before the update (rollout's blocks) and after it


def test_the_old_model_checkpointing_key_names_its_new_place():
    """One switch: ``model.gradient_checkpointing=true`` is an error pointing at the training section."""
    with pytest.raises(ConfigError, match="moved to training.gradient_checkpointing"):
        load_config(None, ["model.gradient_checkpointing=true"])
