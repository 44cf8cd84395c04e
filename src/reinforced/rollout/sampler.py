"""Built-in rollout engine: one prefill per prompt, G completions sampled from its KV cache.

For P prompts and group size G:

1. encode each prompt (chat template; images through the processor), left-pad to S, and prefill the
   batch of P rows once (the vision encoder runs once per prompt), keeping only the last logits;
2. expand the KV cache to P*G rows (``repeat_interleave``: row i*G+j is sample j of prompt i, the
   group-major order of ``types``) and decode token by token;
3. at each step sample ``x_t ~ softmax(filter(logits / temperature))`` with top-k then top-p
   (nucleus, Holtzman et al. 2020, arXiv 1904.09751) filtering, and record the behaviour logprob
   ``log softmax(logits / temperature)[x_t]`` taken BEFORE filtering, so it is exactly what a
   teacher-forced forward at the same temperature computes (``training.logprobs``). ``temperature=0``
   is greedy decoding; its logprobs are then taken at temperature 1;
4. a row finishes at an EOS token ("stop", the EOS token is kept), when the decoded text completes a
   stop string ("stop": tokens are kept up to and including the one that completed it, and the text is
   cut right after the stop string), or after ``max_new_tokens`` ("length"). Finished rows are masked,
   and dropped from the cache once a quarter of the rows have finished.

All vocabulary work is batched tensor ops; the per-token Python is per row (stop-string detokenizing).
``SamplingParams.seed`` makes sampling deterministic (otherwise the global torch RNG is used).
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import DynamicCache

from reinforced.models.processing import Adapter, EncodedPrompt
from reinforced.rollout.engine import ENGINES
from reinforced.rollout.stops import StopStrings, cut_at_stop
from reinforced.types import Completion, Prompt, RolloutGroup, SamplingParams


def filter_logits(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p filtering of logits [A, V]: removed entries become -inf (0 / 1.0: off).

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), top_k=2, top_p=1.0)
    tensor([[-inf, 3., 2., -inf]])
    >>> p = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    >>> filter_logits(p, top_k=0, top_p=0.7).isfinite()   # smallest set with mass >= 0.7
    tensor([[ True,  True, False, False]])
    """
    if top_k > 0 and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]  # [A, 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # [A, V]
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    banned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of logits [A, V] and its behaviour logprob (before filtering): ([A], [A]).

    ``banned`` token ids (a VLM's image placeholders) are never sampled; like top-k/top-p this is a filter,
    so the recorded logprob is still that of the unfiltered distribution.

    >>> tok, lp = sample_tokens(torch.tensor([[0.0, 2.0, 1.0]]), temperature=0.0)
    >>> tok.tolist(), round(lp.item(), 4)
    ([1], -0.4076)
    """
    logits = logits.float()
    if temperature <= 0:  # greedy; logprobs at temperature 1 (the sampling distribution is a point mass)
        tokens = _ban(logits, banned).argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / temperature  # [A, V]
    logprobs = scaled.log_softmax(-1)
    probs = filter_logits(_ban(scaled, banned), top_k, top_p).softmax(-1)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [A]
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def _ban(logits: torch.Tensor, banned: torch.Tensor | None) -> torch.Tensor:
    return logits if banned is None else logits.index_fill(-1, banned, float("-inf"))


def placeholder_token_ids(config: Any) -> list[int]:
    """Image/video placeholder ids of a VLM: sampled in a completion, the model would later try to fill
    them with image features the sample does not have (the placeholder/feature guard fires)."""
    from reinforced.models.vision import image_token_id

    ids = [image_token_id(config), getattr(config, "video_token_id", None)]
    return sorted({int(i) for i in ids if i is not None})


class BuiltinEngine:
    """KV-cache sampler on the training model itself (see the module docstring).

    ``autocast="bf16"`` runs prefill and decode under bfloat16 autocast (about 3x faster matrix products on
    AVX512-BF16 CPUs; logprobs are then those of the bf16 forward). ``last_stats`` holds counters of the
    latest ``generate`` call (prefill_calls, prefill_rows, decode_steps, completion_tokens, seconds).
    """

    def __init__(
        self,
        adapter: Adapter,
        autocast: Literal["none", "bf16"] = "none",
        max_prompt_tokens: int = 1024,
        compact_fraction: float = 0.25,
    ) -> None:
        if autocast not in ("none", "bf16"):
            raise ValueError(f"autocast must be 'none' or 'bf16', got {autocast!r}")
        self.adapter = adapter
        self.autocast = autocast
        self.max_prompt_tokens = max_prompt_tokens
        self.compact_fraction = compact_fraction
        params = inspect.signature(adapter.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        banned = placeholder_token_ids(adapter.model.config) if adapter.loaded.is_vlm else []
        self._banned = torch.tensor(banned, dtype=torch.long) if banned else None
        self.last_stats: dict[str, float] = {}
        self._bf16_copy: torch.nn.Module | None = None

    def _rollout_model(self) -> torch.nn.Module:
        """The module that samples: the training model, or under bf16 a bf16 copy of its weights.

        Autocast would re-cast every fp32 weight at every decode step (measured: rollout twice as slow as
        bf16 weights), so the engine keeps bf16 weights and refreshes them from the training weights at each
        call (one cast per RL step). Buffers (rotary frequencies) stay float32.
        """
        model = self.adapter.model
        if self.autocast != "bf16":
            return model
        with torch.no_grad():
            if self._bf16_copy is None:
                self._bf16_copy = copy.deepcopy(model).eval()
                for p in self._bf16_copy.parameters():
                    p.requires_grad_(False)
                    p.grad = None
                    p.data = p.data.to(torch.bfloat16)
            else:
                for dst, src in zip(self._bf16_copy.parameters(), model.parameters(), strict=True):
                    dst.copy_(src)
        return self._bf16_copy

    # ------------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[RolloutGroup]:
        """G completions per prompt, sampled from one shared prefill per prompt."""
        _check_params(params)
        if not prompts:
            return []
        start = time.perf_counter()
        model = self._rollout_model()
        self._model = model
        was_training = model.training
        model.eval()
        encoded = [self._encode(p, params) for p in prompts]
        device = next(model.parameters()).device
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        try:
            with torch.inference_mode(), self._autocast(device):
                tokens, logprobs, lengths, stopped = self._sample(encoded, params, device, generator)
        finally:
            model.train(was_training)
        groups = self._groups(prompts, encoded, params, tokens, logprobs, lengths, stopped)
        self.last_stats.update(completion_tokens=float(lengths.sum()), seconds=time.perf_counter() - start)
        return groups

    def _autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.autocast == "bf16")

    def _encode(self, prompt: Prompt, params: SamplingParams) -> EncodedPrompt:
        enc = self.adapter.encode(prompt)
        n = len(enc.input_ids)
        if n > self.max_prompt_tokens:
            raise ValueError(
                f"prompt {prompt.prompt_id!r} is {n} tokens long, over rollout.max_prompt_tokens="
                f"{self.max_prompt_tokens}; shorten it or raise the limit"
            )
        limit = getattr(self.adapter.model.config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and n + params.max_new_tokens > limit:
            raise ValueError(
                f"prompt {prompt.prompt_id!r}: {n} prompt tokens + max_new_tokens={params.max_new_tokens} "
                f"exceed the model's context of {limit} positions"
            )
        return enc

    def _forward(self, cache: DynamicCache, **kwargs: Any) -> torch.Tensor:
        """Last-position logits [B, V] (float32) of a forward that extends ``cache`` in place."""
        out = self._model(**kwargs, **{self._cache_kwarg: cache}, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _prefill(self, encoded: list[EncodedPrompt], device: torch.device) -> dict[str, Any]:
        """Prefill the P prompts once; returns their last logits, cache, mask, next positions, M-RoPE deltas."""
        width = max(len(e.input_ids) for e in encoded)
        pad = self.adapter.pad_token_id
        ids = torch.full((len(encoded), width), pad, dtype=torch.long, device=device)  # [P, S]
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):  # left padding: every prompt ends at column S-1
            ids[i, width - len(e.input_ids) :] = torch.tensor(e.input_ids, device=device)
            mask[i, width - len(e.input_ids) :] = 1
        kwargs, deltas = self.adapter.forward_kwargs(ids, mask, [e.vision for e in encoded])
        cache = _new_cache(self._model)
        logits = self._forward(cache, **kwargs)  # [P, V]
        next_pos = mask.sum(-1, keepdim=True)  # [P, 1] text position of the first new token
        return {"logits": logits, "cache": cache, "mask": mask, "next_pos": next_pos, "deltas": deltas}

    def _sample(
        self,
        encoded: list[EncodedPrompt],
        params: SamplingParams,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode loop. Returns tokens [N, M], logprobs [N, M], lengths [N], stopped [N] (N = P*G)."""
        g, m = params.group_size, params.max_new_tokens
        st = self._prefill(encoded, device)
        n = len(encoded) * g
        st["cache"].batch_repeat_interleave(g)  # the shared prefix, copied once per sample
        logits = st["logits"].repeat_interleave(g, 0)  # [N, V]
        mask, next_pos = st["mask"].repeat_interleave(g, 0), st["next_pos"].repeat_interleave(g, 0)
        deltas = None if st["deltas"] is None else st["deltas"].repeat_interleave(g, 0)
        tokens = torch.full((n, m), self.adapter.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(n, m)
        lengths = torch.zeros(n, dtype=torch.long)
        stopped = torch.zeros(n, dtype=torch.bool)
        rows = torch.arange(n)  # cache row -> sample index
        active = torch.ones(n, dtype=torch.bool)  # cache rows still generating
        eos = torch.tensor(self.adapter.eos_token_ids, device=device)
        stops = StopStrings(self.adapter.tokenizer, params.stop, n) if params.stop else None
        banned = None if self._banned is None else self._banned.to(device)
        steps = 0
        for t in range(m):
            tok, lp = sample_tokens(logits, params.temperature, params.top_k, params.top_p, generator, banned)
            live = rows[active]
            tokens[live, t], logprobs[live, t], lengths[live] = tok[active].cpu(), lp[active].cpu(), t + 1
            done = torch.isin(tok, eos).cpu() & active
            if stops is not None:
                done |= stops.push(rows, tok.cpu(), active)
            stopped[rows[done]] = True
            active &= ~done
            if t == m - 1 or not active.any():
                break
            if (~active).sum() >= max(1.0, self.compact_fraction * len(rows)):
                keep = active.nonzero().squeeze(1)
                st["cache"].batch_select_indices(keep.to(device))
                rows, active, tok, mask, next_pos = (
                    rows[keep],
                    active[keep],
                    tok[keep],
                    mask[keep],
                    next_pos[keep],
                )
                deltas = None if deltas is None else deltas[keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            position_ids = self.adapter.decode_position_ids(next_pos, deltas)
            logits = self._forward(
                st["cache"], input_ids=tok[:, None], attention_mask=mask, position_ids=position_ids
            )
            next_pos = next_pos + 1
            steps += 1
        self.last_stats = {
            "prefill_calls": 1.0,
            "prefill_rows": float(len(encoded)),
            "decode_steps": float(steps),
        }
        return tokens, logprobs, lengths, stopped

    def _groups(
        self,
        prompts: Sequence[Prompt],
        encoded: list[EncodedPrompt],
        params: SamplingParams,
        tokens: torch.Tensor,
        logprobs: torch.Tensor,
        lengths: torch.Tensor,
        stopped: torch.Tensor,
    ) -> list[RolloutGroup]:
        g = params.group_size
        groups = []
        for i, (prompt, enc) in enumerate(zip(prompts, encoded, strict=True)):
            completions = []
            for r in range(i * g, (i + 1) * g):
                ids = tokens[r, : lengths[r]].tolist()
                text = cut_at_stop(self.adapter.decode(ids), params.stop)
                finish = "stop" if bool(stopped[r]) else "length"
                lps = tuple(logprobs[r, : lengths[r]].tolist())
                completions.append(
                    Completion(text=text, token_ids=tuple(ids), logprobs=lps, finish_reason=finish)
                )
            groups.append(
                RolloutGroup(
                    prompt=prompt,
                    completions=tuple(completions),
                    prompt_ids=tuple(enc.input_ids),
                    vision=enc.vision,
                )
            )
        return groups


def _new_cache(model: Any) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)  # layer types (sliding windows) follow the model
    except (TypeError, ValueError):
        return DynamicCache()


def _check_params(params: SamplingParams) -> None:
    checks = {
        "group_size": params.group_size >= 1,
        "max_new_tokens": params.max_new_tokens >= 1,
        "temperature": params.temperature >= 0,
        "top_p": 0 < params.top_p <= 1,
        "top_k": params.top_k >= 0,
    }
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"bad sampling parameter {name}={getattr(params, name)!r}")
    if any(not s for s in params.stop):
        raise ValueError(f"stop strings must be non-empty, got {params.stop!r}")


ENGINES.add("builtin", BuiltinEngine)
