"""The rollout engine protocol: prompts in, groups of G sampled completions out.

An engine returns, for each prompt, a ``RolloutGroup`` whose completions carry token ids, behaviour
logprobs ``log softmax(logits / temperature)[token]`` (the sampling distribution before top-k/top-p
filtering, the same quantity ``training.logprobs.completion_logprobs`` computes), and a finish reason,
plus the encoded prompt (``prompt_ids``) and its vision inputs so the trainer rebuilds exactly the
sequence that was sampled. The built-in engine (``rollout.sampler``) runs on the training model itself;
the vLLM engine (``rollout.vllm_engine``) runs vLLM's offline engine in the training process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from reinforced.registry import Registry
from reinforced.types import Prompt, RolloutGroup, SamplingParams


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples ``params.group_size`` completions for every prompt."""

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[RolloutGroup]:
        """One group per prompt, in the prompts' order; group i holds G completions of prompt i."""
        ...


# name -> factory(adapter, **options) -> RolloutEngine (options: autocast, max_prompt_tokens, ...)
ENGINES: Registry[Callable[..., RolloutEngine]] = Registry("rollout engine")


def build_engine(name: str, adapter: Any, **options: Any) -> RolloutEngine:
    """The engine registered as ``name`` (``rollout.engine`` in the config) for ``adapter``'s model."""
    import reinforced.rollout.sampler  # noqa: F401  (registers "builtin")
    import reinforced.rollout.vllm_engine  # noqa: F401  (registers "vllm"; imports vllm only when built)

    return ENGINES[name](adapter, **options)
