"""``timm/<name>``: every timm model when the optional ``timm`` package is installed (``pip install
'visiontrain[timm]'``). timm adapts input channels itself (``in_chans``), so these take any channels."""

from __future__ import annotations

from visiontrain.errors import ModelError
from visiontrain.models.entry import ModelEntry, ModelInput


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need the optional timm package: pip install 'visiontrain[timm]'") from None
    return timm


def available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def names(pattern: str = "*") -> list[str]:
    return ["timm/" + n for n in _timm().list_models(pattern)]


def entry(name: str) -> ModelEntry | None:
    timm = _timm()
    base = name.removeprefix("timm/")
    if not timm.is_model(base):
        raise ModelError(f"unknown timm model {base!r}; list them with `visiontrain models 'timm/{base[:3]}*'`")
    cfg = timm.get_pretrained_cfg(base)
    size = (getattr(cfg, "input_size", None) or (3, 224, 224))[-1]

    def build(inp: ModelInput, **args: object):
        return timm.create_model(base, pretrained=False, num_classes=inp.num_classes, in_chans=inp.channels, **args)

    return ModelEntry(build, f"timm {base}", source="timm", channels=None, default_size=int(size), min_size=32)
