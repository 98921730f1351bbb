"""Models: the notes' networks and torchvision's classifiers behind one factory."""

from visiontrain.models import seeds as _seeds  # noqa: F401  (registers the built-in models)
from visiontrain.models.factory import (
    MODELS,
    ModelEntry,
    ModelInput,
    count_parameters,
    create_model,
    get_entry,
)

__all__ = ["MODELS", "ModelEntry", "ModelInput", "count_parameters", "create_model", "get_entry"]
