"""Models: the notes' networks (docs/cookbook.md §4, the layer demos), CIFAR-style ResNets and VGGs, row-reading
LSTM/GRU, torchvision's classifiers and (optionally) timm's behind one factory; fine-tuning surgery and partial
loading."""

from visiontrain.models import airbench as _airbench  # noqa: F401  (registers the built-in models)
from visiontrain.models import fast as _fast  # noqa: F401
from visiontrain.models import recurrent as _recurrent  # noqa: F401
from visiontrain.models import resnet_cifar as _resnet_cifar  # noqa: F401
from visiontrain.models import seeds as _seeds  # noqa: F401
from visiontrain.models import vgg_small as _vgg_small  # noqa: F401
from visiontrain.models.factory import (
    MODELS,
    ModelEntry,
    ModelInput,
    count_parameters,
    create_model,
    get_entry,
    register_model,
)

__all__ = ["MODELS", "ModelEntry", "ModelInput", "count_parameters", "create_model", "get_entry", "register_model"]
