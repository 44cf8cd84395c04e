"""The update: micro-batching and shuffling never change the gradient; batches keep rows aligned."""

import pytest
import torch

from reinforced.algorithms import resolve_spec
from reinforced.config import TrainingConfig
from reinforced.training.batch import collate_groups, rewards_matrix, step_token_rewards
from reinforced.training.step import Updater, build_optimizer
from reinforced.types import Completion, Prompt, RolloutGroup, StepScore, TrainBatch

VOCAB = 11


class ToyLM(torch.nn.Module):
    """Embedding -> linear: logits depend on the token only, enough to give every row its own gradient."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(VOCAB, 6, generator=g))
        self.out = torch.nn.Parameter(torch.randn(6, VOCAB, generator=g))


def toy_logprobs(model: ToyLM, batch: TrainBatch):
    s = batch.prompt_len
    logits = model.emb[batch.input_ids] @ model.out  # [n, S+T, V]
    logits = logits[:, s - 1 : -1]
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return lp * batch.completion_mask, entropy


def make_groups(num_prompts=3, group_size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = []
    for i in range(num_prompts):
        comps = []
        for _ in range(group_size):
            n = int(torch.randint(1, 6, (1,), generator=g))
            ids = tuple(int(x) for x in torch.randint(1, VOCAB, (n,), generator=g))
            comps.append(Completion(text="x" * n, token_ids=ids, logprobs=tuple([-1.0] * n),
                                    finish_reason="stop" if n < 5 else "length"))
        rewards = tuple(float(x) for x in torch.randint(0, 2, (group_size,), generator=g))
        prompt_ids = tuple(range(1, 2 + i))
        groups.append(RolloutGroup(prompt=Prompt(prompt_id=f"p{i}", question="q"), completions=tuple(comps),
                                   rewards=rewards, accuracy=rewards, prompt_ids=prompt_ids))
    return groups


def batch_with_advantages(groups):
    batch = collate_groups(groups, pad_id=0)
    r = rewards_matrix(groups)
    adv = (r - r.mean(1, keepdim=True)).reshape(-1, 1).expand_as(batch.old_logprobs).contiguous()
    ref = batch.old_logprobs - 0.3 * torch.rand(batch.old_logprobs.shape, generator=torch.Generator().manual_seed(1))
    return TrainBatch(**{**batch.__dict__, "advantages": adv * batch.completion_mask,
                         "ref_logprobs": ref * batch.completion_mask})


def grads_after_one_step(preset: str, micro: int, perm=None):
    torch.manual_seed(0)
    model = ToyLM()
    cfg = TrainingConfig(micro_batch_size=micro, lr=1e-9, max_grad_norm=None)
    opt, sched = build_optimizer(list(model.parameters()), cfg)
    spec = resolve_spec(preset, {})
    upd = Updater(spec=spec, cfg=cfg, model=model, optimizer=opt, scheduler=sched, logprob_fn=toy_logprobs,
                  max_completion_len=8)
    batch = batch_with_advantages(make_groups())
    if perm is not None:
        batch = batch.select(perm)
    upd.policy_step(batch)
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo"])
def test_micro_batch_split_does_not_change_gradient(preset):
    full = grads_after_one_step(preset, micro=64)
    for micro in (1, 5):
        for a, b in zip(full, grads_after_one_step(preset, micro=micro), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_row_permutation_does_not_change_gradient():
    full = grads_after_one_step("grpo", micro=4)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    for a, b in zip(full, grads_after_one_step("grpo", micro=4, perm=perm), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_collate_layout_and_alignment():
    groups = make_groups()
    batch = collate_groups(groups, pad_id=0)
    assert batch.num_samples == 12 and batch.prompt_len == 3
    row = 4 * 2 + 1  # group 2, completion 1
    comp = groups[2].completions[1]
    k = comp.num_tokens
    assert batch.completion_ids[row, :k].tolist() == list(comp.token_ids)
    assert batch.completion_mask[row].sum() == k
    assert batch.input_ids[row, : batch.prompt_len].tolist() == list(groups[2].prompt_ids)
    assert batch.attention_mask[row].sum() == len(groups[2].prompt_ids) + k
    assert batch.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    sub = batch.select([row, 0])
    assert sub.completion_ids[0, :k].tolist() == list(comp.token_ids)
    assert [m.num_samples for m in batch.split(5)] == [5, 5, 2]


def test_step_rewards_land_on_the_token_that_ends_the_step():
    comp = Completion(text="ab cd ef", token_ids=(1, 2, 3, 4), logprobs=(0.0,) * 4, finish_reason="stop")
    pieces = {1: "ab", 2: " cd", 3: " e", 4: "f"}
    group = RolloutGroup(prompt=Prompt(prompt_id="p", question="q"), completions=(comp,), rewards=(1.0,),
                         step_rewards=((StepScore(0, 2, 0.5), StepScore(3, 8, 1.0)),), prompt_ids=(1,))
    scores, ends = step_token_rewards([group], 5, lambda ids: "".join(pieces[t] for t in ids))
    assert scores.tolist() == [[0.5, 0.0, 0.0, 1.0, 0.0]]
    assert ends.tolist() == [[True, False, False, True, False]]


# ---------------------------------------------------------------------------------------------------------
# Critic weighting, critic schedule, and loss metrics under micro-batching


class ToyCritic(torch.nn.Module):
    """Token -> scalar value; the separate critic of value-based presets."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.emb = torch.nn.Parameter(torch.randn(VOCAB, 1, generator=g))


def toy_values(critic: ToyCritic, batch: TrainBatch):
    return critic.emb[batch.completion_ids].squeeze(-1) * batch.completion_mask


def critic_batch():
    batch = batch_with_advantages(make_groups())
    g = torch.Generator().manual_seed(2)
    returns = torch.rand(batch.old_logprobs.shape, generator=g) * batch.completion_mask
    old = torch.zeros_like(returns)
    return TrainBatch(**{**batch.__dict__, "returns": returns, "old_values": old, "ref_logprobs": None})


def critic_updater(overrides, micro=4, warmup=0):
    spec = resolve_spec("ppo", {"kl.coef": 0.0, "kl.placement": "none", **overrides})
    cfg = TrainingConfig(micro_batch_size=micro, lr=1e-3, max_grad_norm=None, warmup_steps=warmup)
    model, critic = ToyLM(), ToyCritic()
    opt, sched = build_optimizer(list(model.parameters()), cfg)
    c_opt, c_sched = build_optimizer(list(critic.parameters()), cfg, lr=spec.critic.lr, total_steps=10)
    return Updater(spec=spec, cfg=cfg, model=model, optimizer=opt, scheduler=sched, logprob_fn=toy_logprobs,
                   max_completion_len=8, critic=critic, critic_optimizer=c_opt, critic_scheduler=c_sched,
                   value_fn=toy_values)


def test_separate_critic_loss_is_not_weighted_by_vf_coef():
    """vf_coef weighs the value loss only where it shares a backward with the policy loss; a separate
    critic backpropagates its own loss unweighted (verl ``workers/critic/dp_critic.py`` update_critic:
    ``loss = vf_loss / self.gradient_accumulation``), so its gradient and loss must not depend on it."""
    grads, losses = [], []
    for vf in (0.1, 0.5):
        upd = critic_updater({"critic.vf_coef": vf})
        stats = upd.critic_step(critic_batch())
        grads.append(upd.critic.emb.grad.clone())
        losses.append(stats["critic/loss"])
        assert stats["critic/loss"] == pytest.approx(stats["critic/value_loss"])
    torch.testing.assert_close(grads[0], grads[1])
    assert losses[0] == pytest.approx(losses[1])


def test_critic_learning_rate_follows_its_warm_up():
    """The critic's scheduler is stepped with its optimiser: warm-up (step+1)/(warmup+1) of critic.lr."""
    upd = critic_updater({"num_epochs": 1}, warmup=2)  # one critic step per update
    base = upd.spec.critic.lr
    assert upd.critic_optimizer.param_groups[0]["lr"] == pytest.approx(base / 3)
    stats = upd.update(critic_batch(), torch.Generator().manual_seed(0))
    assert upd.critic_optimizer.param_groups[0]["lr"] == pytest.approx(base * 2 / 3)
    assert stats["critic/lr"] == pytest.approx(base * 2 / 3)


def test_trainer_state_holds_the_critic_scheduler():
    from types import SimpleNamespace

    from reinforced.training.setup import trainer_state

    upd = critic_updater({"num_epochs": 1}, warmup=2)
    upd.update(critic_batch(), torch.Generator().manual_seed(0))
    run = SimpleNamespace(updater=upd, sampler=SimpleNamespace(state_dict=dict), generator=torch.Generator(),
                          history={})
    state = trainer_state(run)
    assert state["critic_scheduler"]["last_epoch"] == 1


def shared_trunk_updater(micro):
    spec = resolve_spec("orz_ppo", {"critic.shared_trunk": True, "critic.vf_coef": 0.25})
    cfg = TrainingConfig(micro_batch_size=micro, lr=1e-3, max_grad_norm=None)
    model = ToyLM()
    from reinforced.training.value import ValueHead

    head = ValueHead(6)

    def hidden_fn(m, b):
        lp, ent = toy_logprobs(m, b)
        s = b.prompt_len
        return lp, ent, m.emb[b.input_ids][:, s:]  # [n, T, 6]

    params = list(model.parameters()) + list(head.parameters())
    opt, sched = build_optimizer(params, cfg)
    return Updater(spec=spec, cfg=cfg, model=model, optimizer=opt, scheduler=sched, logprob_fn=toy_logprobs,
                   max_completion_len=8, value_head=head, hidden_fn=hidden_fn)


@pytest.mark.parametrize("micro", [1, 5, 64])
def test_shared_trunk_value_loss_is_weighted_once(micro):
    """Shared trunk: loss = policy loss + vf_coef * value loss (PPO, arXiv 1707.06347 Eq. 9, c1 once)."""
    stats = shared_trunk_updater(micro).policy_step(critic_batch())
    expected = stats["train/pg_loss"] + 0.25 * stats["train/value/value_loss"]
    assert stats["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_loss_metrics_are_sums_of_micro_batch_shares():
    """Each micro-batch returns its share of the step's loss, so the step's pg_loss is their sum: with KL
    and entropy off it equals train/loss at every micro-batch size."""
    results = []
    for micro in (1, 5, 64):
        model = ToyLM()
        cfg = TrainingConfig(micro_batch_size=micro, lr=1e-9, max_grad_norm=None)
        opt, sched = build_optimizer(list(model.parameters()), cfg)
        upd = Updater(spec=resolve_spec("grpo", {"kl.coef": 0.0, "kl.placement": "none"}), cfg=cfg, model=model,
                      optimizer=opt, scheduler=sched, logprob_fn=toy_logprobs, max_completion_len=8)
        stats = upd.policy_step(batch_with_advantages(make_groups()))
        assert stats["train/pg_loss"] == pytest.approx(stats["train/loss"], rel=1e-5, abs=1e-7)
        results.append(stats["train/pg_loss"])
    assert results[0] == pytest.approx(results[2], rel=1e-5) and results[1] == pytest.approx(results[2], rel=1e-5)


def test_critic_value_loss_metric_is_summed_over_micro_batches():
    totals = [critic_updater({}, micro=m).critic_step(critic_batch())["critic/value_loss"] for m in (1, 64)]
    assert totals[0] == pytest.approx(totals[1], rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Kimi k1.5 OPMD: several updates per iteration against the fixed pi_i, so tau acts


def on_policy_batch(model):
    batch = batch_with_advantages(make_groups())
    with torch.no_grad():
        old, _ = toy_logprobs(model, batch)
    return TrainBatch(**{**batch.__dict__, "old_logprobs": old, "ref_logprobs": None})


def opmd_grads(tau):
    """Gradients of the first two optimiser steps of one OPMD iteration (same data, same start)."""
    model = ToyLM()
    cfg = TrainingConfig(micro_batch_size=4, lr=1e-2, max_grad_norm=None)
    opt, sched = build_optimizer(list(model.parameters()), cfg)
    upd = Updater(spec=resolve_spec("opmd", {"objective_params.tau": tau}), cfg=cfg, model=model,
                  optimizer=opt, scheduler=sched, logprob_fn=toy_logprobs, max_completion_len=8)
    batch = on_policy_batch(model)
    grads = []
    for _ in range(2):
        upd.policy_step(batch)
        grads.append(model.out.grad.clone())
    return grads


def test_opmd_tau_changes_the_gradient_after_the_first_update():
    """Kimi k1.5 section 2.3.2: the gradient is ``(r - rbar) grad log pi - tau/2 grad (log pi/pi_i)^2`` on
    samples of the fixed pi_i. At the first update pi == pi_i and the tau term has zero gradient; from the
    second it pulls towards pi_i, so tau must change it."""
    (first0, second0), (first1, second1) = opmd_grads(0.0), opmd_grads(1.0)
    torch.testing.assert_close(first0, first1)
    assert not torch.allclose(second0, second1, rtol=1e-4, atol=1e-7)


def test_opmd_preset_makes_several_updates_and_resets_adam_once_per_iteration():
    spec = resolve_spec("opmd")
    assert spec.num_epochs * spec.num_mini_batches > 1 and spec.reset_optimizer_each_step
    model = ToyLM()
    cfg = TrainingConfig(micro_batch_size=4, lr=1e-2, max_grad_norm=None)
    opt, sched = build_optimizer(list(model.parameters()), cfg)
    upd = Updater(spec=spec, cfg=cfg, model=model, optimizer=opt, scheduler=sched, logprob_fn=toy_logprobs,
                  max_completion_len=8)
    updates = spec.num_epochs * spec.num_mini_batches
    for _ in range(2):  # two iterations: the Adam step count restarts at each
        stats = upd.update(on_policy_batch(model), torch.Generator().manual_seed(0))
        assert stats["train/optimizer_steps"] == updates
        assert int(opt.state[model.out]["step"]) == updates


def test_opmd_with_a_single_update_is_rejected():
    with pytest.raises(ValueError, match="tau"):
        resolve_spec("opmd", {"num_epochs": 1, "num_mini_batches": 1})


# ---------------------------------------------------------------------------------------------------------
# Process rewards are counted once


def test_a_step_scoring_term_is_not_also_counted_in_the_outcome_reward():
    """outcome_plus_process: a term that returns step scores contributes through them alone, so the
    composed R holds only the other terms (here the answer check); its scalar score would be the same
    signal a second time."""
    from reinforced.rewards import RewardComposer

    prompt = Prompt("p", "q", answer="13", metadata={"key_steps": [["5 cm"], "169"]})
    text = "### Step 1: sides 5 cm\n### Step 2: 169\n### The final answer is: \\boxed{13}"
    comp = Completion(text=text, token_ids=(1,), logprobs=(0.0,), finish_reason="stop")
    terms = [{"name": "step_rar", "weight": 0.5, "params": {"emit_steps": True}},
             {"name": "math_answer", "accuracy": True}]
    for in_reward, expected in ((True, 1.0 + 0.5 * 1.1), (False, 1.0)):
        composer = RewardComposer(terms, use_worker=False, step_terms_in_reward=in_reward)
        [scored], _ = composer.score([RolloutGroup(prompt, (comp,), prompt_ids=(1,))])
        assert scored.rewards[0] == pytest.approx(expected)
        assert sum(s.score for s in scored.step_rewards[0]) == pytest.approx(0.5 * 0.1)
