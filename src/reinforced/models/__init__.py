"""Models: loading policies/references (local folders, built-in names, GGUF imports) and prompt encoding.

See docs/contracts.md (models/ + rollout/). ``models.vision`` / ``models.tiny_vlm`` hold the
vision-language specifics and are imported lazily, only for VLMs.
"""

from reinforced.models.hub import PULLABLE, model_dir, pull
from reinforced.models.loading import (
    BUILTIN_MODELS,
    LoadedModel,
    ModelNotFoundError,
    load_folder,
    load_policy,
    load_reference,
)
from reinforced.models.processing import Adapter, EncodedPrompt, positions_from_mask

__all__ = [
    "BUILTIN_MODELS",
    "PULLABLE",
    "Adapter",
    "EncodedPrompt",
    "LoadedModel",
    "ModelNotFoundError",
    "load_folder",
    "load_policy",
    "load_reference",
    "model_dir",
    "positions_from_mask",
    "pull",
]
