"""Rollout: the RolloutEngine protocol and the built-in KV-cache engine (``ENGINES["builtin"]``)."""

from reinforced.rollout.engine import ENGINES, RolloutEngine, build_engine
from reinforced.rollout.sampler import BuiltinEngine, filter_logits, sample_tokens

__all__ = ["ENGINES", "BuiltinEngine", "RolloutEngine", "build_engine", "filter_logits", "sample_tokens"]
