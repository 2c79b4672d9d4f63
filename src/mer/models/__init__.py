"""Models: select one by name in config (`model.name`) and make it with `build_model` (DESIGN.md, "Models").

Importing this package registers the built-in models; it has no other side effect.
"""

from mer.models import flexible_at, frame_registry, hf_at, linear, robust_at  # noqa: F401  (registers the built-in models)
from mer.models.flexible_at import FlexibleATModel
from mer.models.hf_at import HFAudioTextModel
from mer.models.registry import MODELS, build_model, model_summary, register
from mer.models.robust_at import RobustATModel

__all__ = ["MODELS", "FlexibleATModel", "HFAudioTextModel", "RobustATModel", "build_model", "model_summary", "register"]
