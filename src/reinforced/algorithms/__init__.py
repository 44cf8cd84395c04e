"""The algorithm zoo: advantage estimators, objectives, loss aggregation, KL, filters, presets.

Pure torch (no transformers, no torch.distributed, nothing from ``training``). Each axis is a registry;
``AlgorithmSpec`` composes one choice per axis and ``PRESETS`` holds the published algorithms.
The trainer uses the functions of ``core`` (see docs/contracts.md).
"""

from reinforced.algorithms.advantages import (
    ADVANTAGES,
    adaptive_lambda,
    gae,
    masked_whiten,
    process_advantages,
    reward_to_go,
)
from reinforced.algorithms.aggregation import AGGREGATORS, LossNormalizer
from reinforced.algorithms.core import (
    AdvantageInputs,
    AdvantageOutputs,
    compute_advantages,
    group_keep_mask,
    policy_loss,
    prune_samples,
    value_loss,
)
from reinforced.algorithms.filters import (
    BatchNotFilled,
    fill_batch,
    informative_groups,
    length_stats,
    mask_truncated,
)
from reinforced.algorithms.kl import KL_ESTIMATORS
from reinforced.algorithms.objectives import OBJECTIVES
from reinforced.algorithms.presets import PRESETS
from reinforced.algorithms.spec import (
    AlgorithmSpec,
    ClipConfig,
    CriticConfig,
    DynamicSamplingConfig,
    KLConfig,
    PruneConfig,
    resolve_spec,
)
from reinforced.algorithms.value import explained_variance, plateaued

__all__ = [
    "ADVANTAGES", "AGGREGATORS", "KL_ESTIMATORS", "OBJECTIVES", "PRESETS",
    "AdvantageInputs", "AdvantageOutputs", "AlgorithmSpec", "BatchNotFilled", "ClipConfig", "CriticConfig",
    "DynamicSamplingConfig", "KLConfig", "LossNormalizer", "PruneConfig",
    "adaptive_lambda", "compute_advantages", "explained_variance", "fill_batch", "gae",
    "group_keep_mask", "informative_groups", "length_stats", "mask_truncated", "masked_whiten", "plateaued",
    "policy_loss", "process_advantages", "prune_samples", "resolve_spec", "reward_to_go", "value_loss",
]
