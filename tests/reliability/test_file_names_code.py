"""A file never names code: an import spec, an unpickling or a loader argument planted in a run's files (a
checkpoint's sidecar, its config.yaml, a --config YAML inside the run) is refused by every command that reads
them, in one line naming the file and the key, and the planted code provably never runs (its marker file never
appears). The user may still say it: ``--trust-code``, restating ``--data SPEC``/``--trust-pickle``, or their own
``--config`` YAML. Commands run in-process (``main_cli``); one subprocess per kind is in the slow tier.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
import yaml

import visiontrain
from visiontrain.config import RunConfig
from visiontrain.errors import VisiontrainError
from visiontrain.use.serve import build_app

TINY = ["--data", "synthetic", "--data-arg", "train=48", "--data-arg", "val=16", "--data-arg", "test=16",
        "--epochs", "1", "--batch-size", "16", "--quiet"]
EVIL_MODULE = """open({marker!r}, 'w').write('code named by a file ran')


class Evil:
    def __init__(self, **kw):
        pass
"""


class _RunsCode:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return (exec, (self.source,))


def _evil_pickle(folder: Path, marker: Path) -> Path:
    path = folder / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "hook": _RunsCode(f"open({str(marker)!r}, 'w').write('ran')")}, path)
    return path


@dataclass
class Answer:
    """What a command answered (the conftest's Answer has the same fields)."""

    code: int
    out: str
    err: str


@dataclass
class Ctx:
    run: Path
    tmp: Path
    marker: Path
    call: Callable[..., Answer]

    def cli(self, *argv: Any) -> Answer:
        return self.call(*argv)

    def api(self, fn: Callable[[], Any]) -> Answer:
        """An API call's answer, as the CLI would print it."""
        try:
            fn()
        except VisiontrainError as exc:
            return Answer(exc.exit_code, "", f"visiontrain: error: {exc}\n")
        return Answer(0, "", "")


# -- what is planted: (name, args) for the data or model section -----------------------------------------------

def _stdlib(ctx: Ctx) -> tuple[str, dict]:
    return "subprocess:run", {"args": ["touch", str(ctx.marker)]}


def _file(ctx: Ctx) -> tuple[str, dict]:
    (ctx.run / "evil.py").write_text(EVIL_MODULE.format(marker=str(ctx.marker)))
    return f"{ctx.run / 'evil.py'}:Evil", {}


def _cwd_module(ctx: Ctx) -> tuple[str, dict]:
    name = f"evil_{uuid.uuid4().hex[:8]}"  # a fresh name: an imported module would not run its body again
    (ctx.tmp / f"{name}.py").write_text(EVIL_MODULE.format(marker=str(ctx.marker)))
    return f"{name}:Evil", {}


def _not_plain(ctx: Ctx) -> tuple[str, dict]:
    return "small_cnn", {"width": {"class": "subprocess.Popen", "args": ["touch", str(ctx.marker)]}}


def _torchvision_weights(ctx: Ctx) -> tuple[str, dict]:
    return "resnet18", {"weights": "DEFAULT"}


def _timm_checkpoint(ctx: Ctx) -> tuple[str, dict]:
    pytest.importorskip("timm")
    return "timm/resnet10t", {"checkpoint_path": str(_evil_pickle(ctx.tmp, ctx.marker))}


DATA = {"stdlib": _stdlib, "file": _file, "cwd-module": _cwd_module}
MODEL = {"class-file": (_file, "model.name"), "class-module": (_cwd_module, "model.name"),
         "not-plain": (_not_plain, "model.args.width"),
         "torchvision-weights": (_torchvision_weights, "model.args.weights"),
         "timm-checkpoint": (_timm_checkpoint, "model.args.checkpoint_path")}


def _plant_sidecars(ctx: Ctx, section: str, payload: Callable[[Ctx], tuple[str, dict]]) -> Path:
    name, args = payload(ctx)
    for which in ("best", "last"):
        path = ctx.run / "checkpoints" / f"{which}.json"
        meta = json.loads(path.read_text())
        target = meta["config"]["data"] if section == "data" else meta["model"]
        target.update(name=name, args=args)
        path.write_text(json.dumps(meta))
    return ctx.run / "checkpoints" / "best.json"


def _plant_headers(ctx: Ctx, section: str, payload: Callable[[Ctx], tuple[str, dict]]) -> Path:
    """The same plant in the copy of the sidecar a .safetensors carries in its header, its .json removed (a lone
    .safetensors is read through its header): the header is a file too."""
    name, args = payload(ctx)
    for which in ("best", "last"):
        weights = ctx.run / "checkpoints" / f"{which}.safetensors"
        with safetensors.safe_open(str(weights), framework="pt") as f:
            header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        key = "config" if section == "data" else "model"
        value = json.loads(header[key])
        (value["data"] if section == "data" else value).update(name=name, args=args)
        header[key] = json.dumps(value)
        safetensors.torch.save_file(tensors, str(weights), metadata=header)
        weights.with_suffix(".json").unlink()
    return ctx.run / "checkpoints" / "best.safetensors"


def _plant_config(ctx: Ctx, section: str, payload: Callable[[Ctx], tuple[str, dict]] | None = None) -> Path:
    """``section`` data or model gets the payload's name and args; "pickle" gets trust_pickle + an evil init_from."""
    path = ctx.run / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    if payload is None:
        cfg["model"].update(trust_pickle=True, init_from=str(_evil_pickle(ctx.tmp, ctx.marker)))
    else:
        name, args = payload(ctx)
        cfg[section].update(name=name, args=args)
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- who reads them -----------------------------------------------------------------------------------------------

def _image(ctx: Ctx) -> Path:
    return next((ctx.run / "samples").glob("*.png"))


SIDECAR_READERS: dict[str, Callable[[Ctx], Answer]] = {
    "evaluate": lambda c: c.cli("evaluate", c.run, "--device", "cpu"),
    "visiontrain.evaluate": lambda c: c.api(lambda: visiontrain.evaluate(c.run, device="cpu")),
    "predict": lambda c: c.cli("predict", c.run, _image(c), "--device", "cpu"),
    "serve": lambda c: c.api(lambda: build_app(c.run, device="cpu")),
    "checkpoint inspect RUN": lambda c: c.cli("checkpoint", "inspect", c.run),
    "checkpoint inspect .safetensors": lambda c: c.cli("checkpoint", "inspect",
                                                       c.run / "checkpoints" / "best.safetensors"),
    "visiontrain.load": lambda c: c.api(lambda: visiontrain.load(c.run, device="cpu")),
    "Run.load": lambda c: c.api(lambda: visiontrain.Run(c.run, RunConfig(), {}).load()),
}
# These read only the sidecar's model: a planted model refuses; a planted dataset is never used (exit 0).
MODEL_ONLY_READERS: dict[str, Callable[[Ctx], Answer]] = {
    "export": lambda c: c.cli("export", c.run, "--out", c.tmp / "model.onnx"),
    "checkpoint convert RUN": lambda c: c.cli("checkpoint", "convert", c.run, "--to", "safetensors", "--out",
                                              c.tmp / "c.safetensors"),
    "train --init-from RUN": lambda c: c.cli("train", *TINY, "--out", c.tmp / "runs", "--init-from", c.run),
    "train --pretrained RUN": lambda c: c.cli("train", *TINY, "--out", c.tmp / "runs", "--pretrained", c.run),
}
CONFIG_READERS: dict[str, Callable[[Ctx], Answer]] = {
    "train --resume": lambda c: c.cli("train", "--resume", c.run, "--quiet"),
    "train --config": lambda c: c.cli("train", "--config", c.run / "config.yaml", "--quiet", "--out", c.tmp / "r"),
    "lr-find --config": lambda c: c.cli("lr-find", "--config", c.run / "config.yaml", "--steps", "5"),
    "train(resume=)": lambda c: c.api(lambda: visiontrain.train(resume=c.run, quiet=True)),
    "train(config.yaml)": lambda c: c.api(lambda: visiontrain.train(c.run / "config.yaml", quiet=True)),
    "find_lr(config.yaml)": lambda c: c.api(lambda: visiontrain.find_lr(c.run / "config.yaml", steps=5)),
}
DATA_CONFIG_READERS = {**CONFIG_READERS,
                       "data info --config": lambda c: c.cli("data", "info", "--config", c.run / "config.yaml")}
DATA_REFUSERS = {"evaluate", "visiontrain.evaluate"}


@pytest.fixture
def ctx(synthetic_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, main_cli) -> Ctx:
    run = tmp_path / "run"
    shutil.copytree(synthetic_run.dir, run, ignore=shutil.ignore_patterns("events.*", "plots"))
    monkeypatch.chdir(tmp_path)  # where a module named by a file would be imported from
    monkeypatch.setattr(sys, "path", list(sys.path))
    return Ctx(run, tmp_path, tmp_path / "RAN", main_cli)


@pytest.mark.parametrize("reader", SIDECAR_READERS)
@pytest.mark.parametrize("payload", DATA)
def test_a_dataset_named_in_a_sidecar_is_never_imported(payload: str, reader: str, ctx: Ctx, one_line_error) -> None:
    sidecar = _plant_sidecars(ctx, "data", DATA[payload])
    result = SIDECAR_READERS[reader](ctx)
    assert not ctx.marker.exists(), f"{reader}: the code a sidecar named ran"
    if reader in DATA_REFUSERS:
        one_line_error(result, str(sidecar), "config.data.name", "--trust-code", "--data ")
    else:
        assert result.code == 0, (reader, result.err)  # the command never builds the dataset: nothing to refuse


@pytest.mark.parametrize("reader", [*SIDECAR_READERS, *MODEL_ONLY_READERS])
@pytest.mark.parametrize("payload", MODEL)
def test_a_models_arguments_in_a_sidecar_are_plain_values_only(payload: str, reader: str, ctx: Ctx,
                                                               one_line_error) -> None:
    plant, fragment = MODEL[payload]
    sidecar = _plant_sidecars(ctx, "model", plant)
    result = {**SIDECAR_READERS, **MODEL_ONLY_READERS}[reader](ctx)
    assert not ctx.marker.exists(), f"{reader}: the code a sidecar named ran"
    one_line_error(result, str(sidecar), fragment)
    assert not (ctx.tmp / "runs").exists() and not (ctx.tmp / "model.onnx").exists()


@pytest.mark.parametrize("reader", SIDECAR_READERS)
@pytest.mark.parametrize("payload", [*DATA, *MODEL])
def test_a_lone_safetensors_header_names_no_code_either(payload: str, reader: str, ctx: Ctx,
                                                       one_line_error) -> None:
    """A .safetensors copied without its .json describes itself in its header: the same rules hold for it."""
    section = "data" if payload in DATA else "model"
    weights = _plant_headers(ctx, section, DATA[payload] if section == "data" else MODEL[payload][0])
    result = SIDECAR_READERS[reader](ctx)
    assert not ctx.marker.exists(), f"{reader}: the code a header named ran"
    if section == "model":
        one_line_error(result, str(weights), MODEL[payload][1])
    elif reader in DATA_REFUSERS:
        one_line_error(result, str(weights), "config.data.name", "--trust-code", "--data ")
    else:
        assert result.code == 0, (reader, result.err)


@pytest.mark.parametrize("reader", DATA_CONFIG_READERS)
@pytest.mark.parametrize("payload", DATA)
def test_a_dataset_named_in_a_runs_config_is_never_imported(payload: str, reader: str, ctx: Ctx,
                                                            one_line_error) -> None:
    config = _plant_config(ctx, "data", DATA[payload])
    result = DATA_CONFIG_READERS[reader](ctx)
    assert not ctx.marker.exists(), f"{reader}: the code the run's config.yaml named ran"
    one_line_error(result, str(config), "data.name", "--trust-code", "--data ")
    assert not (ctx.tmp / "r").exists()


@pytest.mark.parametrize("reader", CONFIG_READERS)
@pytest.mark.parametrize("payload", [*MODEL, "trust_pickle"])
def test_a_runs_config_may_not_unpickle_or_pass_loader_arguments(payload: str, reader: str, ctx: Ctx,
                                                                  one_line_error) -> None:
    if payload == "trust_pickle":
        config, fragments = _plant_config(ctx, "pickle"), ("model.trust_pickle", "--trust-pickle")
    else:
        config, fragments = _plant_config(ctx, "model", MODEL[payload][0]), (MODEL[payload][1],)
    result = CONFIG_READERS[reader](ctx)
    assert not ctx.marker.exists(), f"{reader}: the run's config.yaml ran code"
    one_line_error(result, str(config), *fragments)


def test_loader_arguments_are_refused_from_the_command_line_too(tmp_path: Path, main_cli, one_line_error) -> None:
    result = main_cli("train", *TINY, "--out", tmp_path, "--model", "resnet18", "--set", "model.args.weights=DEFAULT")
    one_line_error(result, "'weights'", "--pretrained")
    result = main_cli("models", "show", "resnet18", "--arg", "model_path=x.pth")
    one_line_error(result, "'model_path'")


# -- the user may say it -------------------------------------------------------------------------------------------

SHAPES_MODULE = '''
from torch.utils.data import Dataset
from visiontrain.data.synthetic import SHAPES, make_shapes


class Shapes(Dataset):
    classes = list(SHAPES)

    def __init__(self, train=True, n=64):
        self.images, labels = make_shapes(n if train else n // 2, 16, 3, seed=0 if train else 1)
        self.targets = labels.tolist()

    def __getitem__(self, i):
        return self.images[i], self.targets[i]

    def __len__(self):
        return len(self.targets)
'''


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[visiontrain.Run, str]:
    """A run on a user's own Dataset class, named by file path (the API call is the user speaking)."""
    root = tmp_path_factory.mktemp("custom")
    (root / "shapes_data.py").write_text(SHAPES_MODULE)
    spec = f"{root / 'shapes_data.py'}:Shapes"
    run = visiontrain.train({"data": spec, "epochs": 1, "batch_size": 32, "out": str(root / "runs"), "name": "own"},
                            quiet=True)
    return run, spec


def test_trust_code_or_restating_the_dataset_evaluates_a_custom_dataset_run(custom_run, main_cli,
                                                                            one_line_error) -> None:
    run, spec = custom_run
    one_line_error(main_cli("evaluate", run.dir, "--device", "cpu"), "config.data.name", "--trust-code")
    for extra in (["--trust-code"], ["--data", spec]):
        result = main_cli("evaluate", run.dir, "--device", "cpu", "--json", *extra)
        assert result.code == 0, (extra, result.err)
        assert json.loads(result.out)["data"] == spec
    assert visiontrain.evaluate(run.dir, device="cpu", trust_code=True)["data"] == spec


def test_trust_code_or_restating_the_dataset_resumes_a_custom_dataset_run(custom_run, tmp_path: Path, main_cli,
                                                                         one_line_error) -> None:
    run, spec = custom_run
    copy = tmp_path / "own"
    shutil.copytree(run.dir, copy)
    one_line_error(main_cli("train", "--resume", copy, "--quiet"), str(copy / "config.yaml"), "--trust-code")
    for extra in (["--trust-code"], ["--data", spec]):
        result = main_cli("train", "--resume", copy, "--quiet", *extra)
        assert result.code == 0, (extra, result.err)
    assert visiontrain.train(resume=copy, quiet=True, trust_code=True).summary["data"]["name"] == spec


def test_a_users_own_config_yaml_may_name_their_dataset(custom_run, tmp_path: Path, main_cli) -> None:
    _, spec = custom_run
    own = tmp_path / "my.yaml"
    own.write_text(yaml.safe_dump({"data": spec, "epochs": 1, "batch_size": 32, "out": str(tmp_path / "runs"),
                                   "name": "mine"}))
    result = main_cli("train", "--config", own, "--quiet")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "runs" / "mine" / "summary.json").read_text())["data"]["name"] == spec


def test_trust_pickle_typed_by_the_user_lets_a_resume_unpickle(synthetic_run, tmp_path: Path, main_cli,
                                                               one_line_error) -> None:
    run = tmp_path / "run"
    shutil.copytree(synthetic_run.dir, run, ignore=shutil.ignore_patterns("events.*", "plots"))
    whole = tmp_path / "whole.pth"
    torch.save(visiontrain.load(run, device="cpu").model, whole)  # a whole model: torch.nn classes only
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"].update(trust_pickle=True, init_from=str(whole))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    one_line_error(main_cli("train", "--resume", run, "--quiet"), "model.trust_pickle", "--trust-pickle")
    result = main_cli("train", "--resume", run, "--quiet", "--trust-pickle")
    assert result.code == 0, result.err
    assert "unpickling" in result.err  # the --trust-pickle warning: the user asked for it


OWN_MODEL = '''
from torch import nn

open({marker!r}, "a").write("imported\\n")  # each import leaves a line: the tests count them


class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)
'''


@pytest.fixture(scope="module")
def own_model_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[visiontrain.Run, str, Path]:
    """A run of the user's own nn.Module class named by file (the cookbook's Tudui, through the API)."""
    root = tmp_path_factory.mktemp("own-model")
    marker = root / "imports.txt"
    (root / "my_net.py").write_text(OWN_MODEL.format(marker=str(marker)))
    spec = f"{root / 'my_net.py'}:Net"
    run = visiontrain.train({"data": "synthetic", "data_args": {"train": 48, "val": 16, "test": 16}, "model": spec,
                             "model_args": {"width": 6}, "epochs": 1, "batch_size": 16, "plots": False,
                             "out": str(root / "runs"), "name": "own"}, quiet=True)
    return run, spec, marker


def test_a_run_of_your_own_model_class_records_it_and_is_used_when_you_say_it(own_model_run, main_cli,
                                                                            one_line_error) -> None:
    run, spec, _ = own_model_run
    assert json.loads((run.dir / "checkpoints" / "best.json").read_text())["model"]["name"] == spec
    image = next((run.dir / "samples").glob("*.png"))
    one_line_error(main_cli("predict", run.dir, image), "model.name", f"--model {spec}", "--trust-code")
    expected = visiontrain.predict(run.dir, [image], model_spec=spec)
    for extra in (["--model", spec], ["--trust-code"]):
        result = main_cli("predict", run.dir, image, "--json", *extra)
        assert result.code == 0, (extra, result.err)
        assert json.loads(result.out) == expected
        assert main_cli("evaluate", run.dir, "--json", *extra).code == 0
    assert main_cli("export", run.dir, "--format", "torchscript", "--out", run.dir.parent / "own.pt",
                    "--model", spec).code == 0
    model = visiontrain.load(run.dir, model_spec=spec)
    assert model.model.body[0].out_channels == 6 and visiontrain.load(run.dir, trust_code=True).classes == model.classes
    assert run.load(model_spec=spec).meta["model"]["name"] == spec
    build_app(run.dir, device="cpu", model_spec=spec)


@pytest.mark.slow
def test_your_own_model_class_is_not_imported_on_a_run_files_say_so(own_model_run, tmp_path: Path, commands,
                                                                   one_line_error) -> None:
    """In a fresh process (nothing imported yet), a refused load never imports the class: its marker stays."""
    run, _, marker = own_model_run
    before = marker.read_text()
    image = next((run.dir / "samples").glob("*.png"))
    result = commands({"predict": [sys.executable, "-m", "visiontrain", "predict", run.dir, image],
                           "resume": [sys.executable, "-m", "visiontrain", "train", "--resume", run.dir]},
                      cwd=tmp_path)
    for answer in result.values():
        one_line_error(answer, "model.name", "--trust-code")
    assert marker.read_text() == before, "a run's files imported the model class"


# -- the same as real processes ------------------------------------------------------------------------------------

def test_the_issues_evaluate_attack_as_a_real_process(ctx: Ctx, cli, one_line_error) -> None:
    sidecar = _plant_sidecars(ctx, "data", _stdlib)
    one_line_error(cli("evaluate", ctx.run, "--device", "cpu", cwd=ctx.tmp), str(sidecar), "--trust-code")
    assert not ctx.marker.exists()


@pytest.mark.slow
def test_one_real_process_per_kind(ctx: Ctx, commands, one_line_error) -> None:
    spare = ctx.tmp / "spare"
    shutil.copytree(ctx.run, spare)
    _plant_sidecars(ctx, "data", _cwd_module)
    _plant_config(ctx, "data", _file)
    other = Ctx(spare, ctx.tmp, ctx.marker, ctx.call)
    _plant_sidecars(other, "model", _not_plain)
    _plant_config(other, "pickle")
    vt = [sys.executable, "-m", "visiontrain"]
    results = commands({
        "evaluate": [*vt, "evaluate", ctx.run, "--device", "cpu"],
        "resume": [*vt, "train", "--resume", ctx.run, "--quiet"],
        "config": [*vt, "data", "info", "--config", ctx.run / "config.yaml"],
        "serve": [*vt, "serve", spare, "--port", "0", "--device", "cpu"],
        "init-from": [*vt, "train", *TINY, "--out", ctx.tmp / "runs", "--init-from", spare],
        "pickle": [*vt, "train", "--resume", spare, "--quiet"],
    }, cwd=ctx.tmp, timeout=300)
    for name, result in results.items():
        one_line_error(result, "--trust" if name in ("evaluate", "resume", "config", "pickle") else "plain value")
    assert not ctx.marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("reader", MODEL_ONLY_READERS)
def test_a_dataset_named_in_a_sidecar_is_not_imported_by_export_training_or_converting(reader: str, ctx: Ctx) -> None:
    _plant_sidecars(ctx, "data", _stdlib)
    result = MODEL_ONLY_READERS[reader](ctx)
    assert result.code == (2 if reader.startswith("checkpoint convert") else 0), result.err  # "already visiontrain"
    assert "Traceback" not in result.err
    assert not ctx.marker.exists()


@pytest.mark.slow
def test_trust_code_lets_a_config_inside_a_run_folder_train(custom_run, tmp_path: Path, main_cli,
                                                          one_line_error) -> None:
    run, spec = custom_run
    config = run.dir / "config.yaml"
    one_line_error(main_cli("train", "--config", config, "--quiet", "--out", tmp_path), str(config), "--trust-code")
    result = main_cli("train", "--config", config, "--quiet", "--out", tmp_path, "--name", "again", "--trust-code")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["data"]["name"] == spec
