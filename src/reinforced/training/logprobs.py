"""Per-token logprobs (and entropy) of completion tokens under a model: the teacher-forced forward.

For a row with prompt x (left-padded to S) and completion y (right-padded to T),

    logprob_t = log softmax(z_{S+t-1} / tau)[y_t],    entropy_t = -sum_v p_v log p_v,  p = softmax(z_{S+t-1} / tau)

where z_j are the logits at column j and tau the sampling temperature: the same distribution the rollout
engine samples from (its behaviour logprobs are this quantity taken before top-k/top-p filtering), so
on-policy ratios are exactly 1. Positions follow the attention mask (left padding).

Two ways to the logits, same numbers (``training.fused_logprobs``):

- fused (default, when the LM head is a plain ``nn.Linear`` applied as is): the model's trunk gives the
  hidden states of the real (non-padding) completion positions and ``fused_logprobs`` applies the head, the
  log-softmax and the entropy in token chunks, recomputing each chunk's logits in the backward: no
  [n, T, V] tensor exists at any point, in the forward or the backward;
- full logits (the fallback, and the reference the fused path is tested against): the whole model with
  ``logits_to_keep`` (only the last T+1 positions go through the head), then ``z[y] - logsumexp(z)`` in row
  chunks. The [n, T, V] logits and their gradient are materialised.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from reinforced.models.processing import Adapter
from reinforced.training.fused_logprobs import fused_linear_logprobs
from reinforced.types import TrainBatch

_ROWS_PER_CHUNK = 4
# config attributes of a transform between the LM head and the logits (the fused head would skip it)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
                     "output_multiplier_scale")


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs [n, T] of ``targets`` [n, T] under logits [n, T, V] / temperature, and entropy [n, T].

    The entropy carries a gradient only with ``entropy_grad`` (an entropy bonus in the loss); as a metric it
    is computed without building a graph over the [n, T, V] softmax.

    >>> lp, ent = token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]), with_entropy=True)
    >>> lp.exp(), ent.exp()   # uniform over 4 tokens
    (tensor([[0.2500, 0.2500]]), tensor([[4., 4.]]))
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for logprobs, got {temperature}")
    lps, ents = [], []
    for i in range(0, logits.shape[0], _ROWS_PER_CHUNK):
        z = logits[i : i + _ROWS_PER_CHUNK].float() / temperature  # [c, T, V]
        lse = torch.logsumexp(z, dim=-1)  # [c, T]
        lps.append(z.gather(-1, targets[i : i + _ROWS_PER_CHUNK, :, None]).squeeze(-1) - lse)
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                # H = logsumexp(z) - sum_v softmax(z)_v z_v
                ents.append(lse - (z.softmax(-1) * z).sum(-1))
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


def _cache_kwarg(model: Any) -> str:
    """transformers 5 names the KV-cache argument ``cache`` (``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def completion_logprobs(
    model: Any,
    adapter: Adapter,
    batch: TrainBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prefix: bool = True,
    entropy_grad: bool = False,
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs [n, T] (and entropy [n, T] or None) of the completion tokens of ``batch`` under ``model``.

    Differentiable (call under ``torch.no_grad()`` for old/reference logprobs). Padding positions
    (attention mask 0 in the completion part) are 0 in both outputs. With ``share_prefix``, rows of the same
    group (same prompt) run the prompt once: see ``shared_prefix_forward``. With ``fused`` (and a plain
    linear head) the LM head is applied in token chunks: see ``fused_logprobs``.
    """
    logprobs, entropy, _ = completion_forward(model, adapter, batch, temperature, with_entropy, share_prefix,
                                              entropy_grad, fused=fused)
    return logprobs, entropy


def completion_forward(
    model: Any,
    adapter: Adapter,
    batch: TrainBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prefix: bool = True,
    entropy_grad: bool = False,
    with_hidden: bool = False,
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``completion_logprobs`` plus, with ``with_hidden``, the last hidden states [n, T, H] that predict each
    completion token (the LM head's input: a value head on the policy trunk reads them)."""
    s = batch.prompt_len
    targets = batch.input_ids[:, s:]  # [n, T]
    real = batch.attention_mask[:, s:].bool()  # [n, T]
    unique, inverse = torch.unique(batch.group_index, return_inverse=True)
    # FSDP2 (``reshard`` on the module): one forward per backward, or the second forward's gradients miss the
    # reduce-scatter of the first; the full teacher-forced forward gives the same numbers
    share = (share_prefix and len(unique) < batch.num_samples and _accepts_logits_to_keep(model)
             and not hasattr(model, "reshard") and not _checkpointing(model))
    head = fusable_head(model) if fused else None
    if head is not None:
        hidden = trunk_hidden(model, adapter, batch, inverse if share else None)  # [n, T, H]
        lp, ent = fused_linear_logprobs(hidden[real], head.weight, head.bias, targets[real], temperature,
                                        with_entropy, entropy_grad)  # padding rows never reach the head
        logprobs = lp.new_zeros(real.shape).masked_scatter(real, lp)
        entropy = None if ent is None else ent.new_zeros(real.shape).masked_scatter(real, ent)
        return logprobs, entropy, (hidden if with_hidden else None)
    logits, hidden = full_logits_forward(model, adapter, batch, inverse if share else None, with_hidden)
    logprobs, entropy = token_logprobs(logits, targets, temperature, with_entropy, entropy_grad)
    logprobs = logprobs.masked_fill(~real, 0.0)
    if entropy is not None:
        entropy = entropy.masked_fill(~real, 0.0)
    return logprobs, entropy, hidden


def _checkpointing(model: Any) -> bool:
    """Whether this forward recomputes its layers in the backward (``training.gradient_checkpointing``):
    Hugging Face's checkpointed layers then drop the KV cache the shared prefix is built on."""
    if not torch.is_grad_enabled():
        return False
    return any(getattr(m, "gradient_checkpointing", False) and m.training for m in model.modules())


def fusable_head(model: Any) -> torch.nn.Linear | None:
    """The LM head when ``logits = head(trunk(x))`` exactly, else None (the caller keeps the full logits).

    Needs a plain ``nn.Linear`` head (not quantised or adapter-wrapped) and a separate trunk
    (``model.base_model``); models that scale or soft-cap the logits after the head (Gemma 2's
    ``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``logits_scaling``, ...) do it in their
    own forward, which the fused head would skip.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    trunk = getattr(model, "base_model", None)
    if type(head) is not torch.nn.Linear or trunk is None or trunk is model:
        return None
    if hasattr(head.weight, "placements"):  # FSDP2-sharded: only the model's own forward gathers it
        return None
    config = model.config.get_text_config()
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in _LOGIT_TRANSFORMS):
        return None
    return head


def trunk_hidden(model: Any, adapter: Adapter, batch: TrainBatch, inverse: torch.Tensor | None
                 ) -> torch.Tensor:
    """Last hidden states [n, T, H] (the LM head's input) at the columns predicting the completion tokens,
    from ``model.base_model`` (no LM head, so no logits at all). ``inverse`` [n] (row -> distinct prompt):
    run each prompt once, as ``shared_prefix_forward``; None: the full teacher-forced forward."""
    trunk = model.base_model
    if inverse is not None:
        out, rest = _shared_prefix_outputs(trunk, adapter, batch, inverse, {})
        return torch.cat([out.last_hidden_state[inverse, -1:], rest.last_hidden_state[:, :-1]], dim=1)
    kwargs, _ = adapter.forward_kwargs(batch.input_ids, batch.attention_mask, list(batch.vision))
    # completion token t sits at column S+t and is predicted by column S+t-1
    return trunk(**kwargs, use_cache=False).last_hidden_state[:, batch.prompt_len - 1 : -1]


def full_logits_forward(model: Any, adapter: Adapter, batch: TrainBatch, inverse: torch.Tensor | None,
                        with_hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [n, T, V] predicting the completion tokens (and hidden states [n, T, H] with ``with_hidden``)
    from the whole model; ``inverse`` as in ``trunk_hidden``."""
    if inverse is not None:
        return shared_prefix_forward(model, adapter, batch, inverse, with_hidden)
    s, t = batch.prompt_len, batch.input_ids.shape[1] - batch.prompt_len
    extra = {"output_hidden_states": True} if with_hidden else {}  # not every forward accepts the flag
    kwargs, _ = adapter.forward_kwargs(batch.input_ids, batch.attention_mask, list(batch.vision))
    if _accepts_logits_to_keep(model):
        # completion token t sits at column S+t and is predicted by column S+t-1: keep S-1 .. S+T-1
        out = model(**kwargs, use_cache=False, logits_to_keep=t + 1, **extra)
        logits = out.logits[:, :-1]  # [n, T, V]
    else:
        out = model(**kwargs, use_cache=False, **extra)
        logits = out.logits[:, s - 1 : -1]
    return logits, (out.hidden_states[-1][:, s - 1 : s - 1 + t] if with_hidden else None)


def shared_prefix_forward(
    model: Any, adapter: Adapter, batch: TrainBatch, inverse: torch.Tensor, with_hidden: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [n, T, V] predicting the completion tokens (and their hidden states [n, T, H] with
    ``with_hidden``), running each distinct prompt once.

    The G completions of a prompt share its prefix: the prompt (and its images) is run once with a KV cache
    that keeps its autograd graph, the cache is expanded to the rows (``index_select``, whose backward sums
    the rows' gradients into the shared prefix), and the completions are run on top of it. Same numbers and
    same gradient as the full teacher-forced forward, with the prompt's compute divided by G. ``inverse``
    [n] maps each row to its distinct prompt.
    """
    extra = {"output_hidden_states": True} if with_hidden else {}
    out, rest = _shared_prefix_outputs(model, adapter, batch, inverse, {"logits_to_keep": 1, **extra}, extra)
    # column t of the completion part predicts completion token t+1
    logits = torch.cat([out.logits[inverse, -1:], rest.logits[:, :-1]], dim=1)  # [n, T, V]
    if not with_hidden:
        return logits, None
    hidden = torch.cat([out.hidden_states[-1][inverse, -1:], rest.hidden_states[-1][:, :-1]], dim=1)
    return logits, hidden  # [n, T, H]


def _shared_prefix_outputs(module: Any, adapter: Adapter, batch: TrainBatch, inverse: torch.Tensor,
                           prompt_extra: dict[str, Any], rest_extra: dict[str, Any] | None = None
                           ) -> tuple[Any, Any]:
    """``module``'s outputs on the distinct prompts [u, S] (with a KV cache) and on the completions [n, T]
    on top of that cache expanded to the rows; ``module`` is the whole model or its trunk."""
    s = batch.prompt_len
    device = batch.input_ids.device
    first = torch.zeros(int(inverse.max()) + 1, dtype=torch.long, device=device)
    rows = torch.arange(len(inverse) - 1, -1, -1, device=device)
    first.scatter_(0, inverse.flip(0), rows)  # a row of each prompt
    vision = [batch.vision[i] for i in first.tolist()] if batch.vision else []
    prompt_mask = batch.attention_mask[first, :s]
    kwargs, deltas = adapter.forward_kwargs(batch.input_ids[first, :s], prompt_mask, vision)
    out = module(**kwargs, use_cache=True, **prompt_extra)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    cache.reorder_cache(inverse)  # [u, ...] -> [n, ...] along the batch axis
    text_positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)[:, s:]  # [n, T]
    positions = adapter.decode_position_ids(text_positions, None if deltas is None else deltas[inverse])
    rest = module(
        input_ids=batch.input_ids[:, s:], attention_mask=batch.attention_mask, position_ids=positions,
        **{_cache_kwarg(module): cache}, use_cache=True, **(rest_extra or {}),
        cache_position=torch.arange(s, batch.input_ids.shape[1], device=device),
    )
    return out, rest
