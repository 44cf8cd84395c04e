"""reinforced: R1-style reinforcement learning for language and vision-language models.

The public API (also ``reinforced --help`` on the command line)::

    from reinforced import Trainer
    result = Trainer(model="smollm2-135m-instruct", reward_funcs=[my_reward, "format"],
                     train_dataset=[{"question": "2+3?", "answer": "5"}, ...], algorithm="grpo").train()

    from reinforced import fit, load_config
    result = fit(load_config("smollm2_arithmetic_grpo", ["training.max_steps=10"]))

Names are imported on first use (PEP 562), so ``import reinforced`` and ``reinforced --version`` stay fast.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("reinforced")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "Trainer": "reinforced.api",
    "fit": "reinforced.training.loop",
    "FitResult": "reinforced.training.loop",
    "load_config": "reinforced.config",
    "Config": "reinforced.config",
    "ConfigError": "reinforced.config",
    "register_reward": "reinforced.rewards.base",
    "REWARDS": "reinforced.rewards.base",
    "RewardResult": "reinforced.types",
    "Prompt": "reinforced.types",
    "PRESETS": "reinforced.algorithms",
    "resolve_spec": "reinforced.algorithms",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reinforced' has no attribute {name!r}; public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
