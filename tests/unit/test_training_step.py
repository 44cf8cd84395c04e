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
