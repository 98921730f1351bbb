"""A crafted .pt2 never runs code through predict or serve.

``torch.export.load`` runs code from a .pt2 in more ways than pickles: a pickled sample input (its safe load
falls back to a full unpickle, pytorch#153410), a weight or constant flagged as pickled (unpickled in full, no
safe try first), the Python source of the program's guards (compiled by ``.module()``) and its shape
expressions (``sympy.sympify``, which is ``eval``). Each is planted in a real ``visiontrain export --format pt2``
file, rewritten member by member. First each payload is shown live — loaded as the user's own trusted file,
it runs — then predict (in process and as a subprocess) and ``build_app`` refuse the file in one line before
torch reads it, and the payload's marker file never appears. The legitimate export still predicts and serves
with ``--trust-code``.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from visiontrain.data.synthetic import make_shapes
from visiontrain.use.export.runtime import UntrustedExport, load_exported
from visiontrain.use.export.write import export
from visiontrain.use.serve import build_app

KINDS = ["sample-inputs-pickle", "weight-pickle", "constant-pickle", "guard-source", "shape-expression"]


class _RunsCode:
    """Unpickling this calls ``exec`` on its source: what a hostile member carries."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple:
        return (exec, (self.source,))


def _torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _plant(members: dict[str, bytes], kind: str, code: str) -> None:
    """Put ``code`` into the archive's members the way ``kind`` says (member names end as torch writes them)."""
    name = {key.split("/", 1)[1]: key for key in members}  # without the archive's top folder
    if kind == "sample-inputs-pickle":
        members[name["data/sample_inputs/model.pt"]] = _torch_saved(((_RunsCode(code),), {}))
    elif kind == "weight-pickle":
        config = json.loads(members[name["data/weights/model_weights_config.json"]])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        members[name["data/weights/model_weights_config.json"]] = json.dumps(config).encode()
        members[name[f"data/weights/{first['path_name']}"]] = _torch_saved(_RunsCode(code))
    elif kind == "constant-pickle":
        top = next(iter(members)).split("/", 1)[0]
        members[name["data/constants/model_constants_config.json"]] = json.dumps({"config": {"evil": {
            "path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}).encode()
        members[f"{top}/data/constants/opaque_obj_0"] = pickle.dumps(_RunsCode(code))
    else:
        program = json.loads(members[name["models/model.json"]])
        # Python source in the program: hex, so that no quote of the payload ends up in torch's generated code
        run = f"exec(__import__('binascii').unhexlify('{code.encode().hex()}'))"
        if kind == "guard-source":
            program["guards_code"] = [f"{run} is None"]
        else:  # every shape expression of the graph is a string that sympify evaluates
            _first_shape_expression(program)["expr_str"] += f" + 0*{run}"
        members[name["models/model.json"]] = json.dumps(program).encode()


def _first_shape_expression(node: object) -> dict:
    found = []

    def walk(item: object) -> None:
        if isinstance(item, dict):
            if isinstance(item.get("expr_str"), str):
                found.append(item)
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    walk(node)
    return found[0]


def hostile_pt2(legit: Path, folder: Path, kind: str) -> tuple[Path, Path]:
    """A copy of a real .pt2 with a payload planted in one member; the payload writes ``marker``."""
    marker = folder / f"RAN-{kind}"
    with zipfile.ZipFile(legit) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    _plant(members, kind, f"open({str(marker)!r}, 'w').write('code from the .pt2 ran')")
    path = folder / f"{kind}.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return path, marker


@pytest.fixture(scope="module")
def legit_pt2(synthetic_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(synthetic_run.dir, "pt2", tmp_path_factory.mktemp("pt2")).path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    pictures, labels = make_shapes(1, 32, 3, seed=7)
    path = tmp_path_factory.mktemp("image") / "shape.png"
    Image.fromarray(pictures[0].permute(1, 2, 0).numpy()).save(path)
    return path, int(labels[0])


@pytest.mark.parametrize("kind", KINDS)
def test_each_planted_payload_is_live_when_the_file_is_trusted(kind: str, legit_pt2: Path, tmp_path: Path) -> None:
    """The plantings are real: torch.export.load (what trust_code=True leads to) runs every one of them."""
    path, marker = hostile_pt2(legit_pt2, tmp_path, kind)
    with contextlib.suppress(Exception):  # some fail after their code ran; the marker is what counts
        load_exported(path, trust_code=True).forward(torch.zeros(1, 3, 32, 32))
    assert marker.read_text() == "code from the .pt2 ran"


@pytest.mark.parametrize("kind", KINDS)
def test_predict_and_serve_refuse_a_pt2_before_torch_reads_it(kind: str, legit_pt2: Path, tmp_path: Path, image,
                                                              main_cli, one_line_error: Callable[..., str]) -> None:
    path, marker = hostile_pt2(legit_pt2, tmp_path, kind)
    one_line_error(main_cli("predict", path, image[0]), str(path), "--trust-code", "runs code")
    with pytest.raises(UntrustedExport, match="--trust-code"):
        build_app(path)
    with pytest.raises(UntrustedExport):
        load_exported(path)
    assert not marker.exists(), "the .pt2's code ran"


def test_predict_as_a_process_refuses_a_pickle_in_the_sample_inputs(legit_pt2: Path, tmp_path: Path, image,
                                                                    cli, one_line_error) -> None:
    """The issue's case, end to end: `visiontrain predict hostile.pt2` in its own process."""
    path, marker = hostile_pt2(legit_pt2, tmp_path, "sample-inputs-pickle")
    one_line_error(cli("predict", path, image[0], cwd=tmp_path), str(path), "--trust-code")
    assert not marker.exists()


@pytest.mark.slow
def test_every_planted_member_is_refused_by_predict_and_serve_processes(legit_pt2: Path, tmp_path: Path, image,
                                                                        commands, one_line_error) -> None:
    planted = {kind: hostile_pt2(legit_pt2, tmp_path, kind) for kind in KINDS}
    argv = [sys.executable, "-m", "visiontrain"]
    for command in ("predict", "serve"):
        extra = [image[0]] if command == "predict" else ["--port", "0"]
        runs = {kind: [*argv, command, path, *extra] for kind, (path, _) in planted.items()}
        for kind, result in commands(runs, cwd=tmp_path).items():
            path, marker = planted[kind]
            one_line_error(result, str(path), "--trust-code")
            assert not marker.exists(), (command, kind)


def test_the_legitimate_pt2_predicts_and_serves_with_trust_code(legit_pt2: Path, image, main_cli,
                                                                one_line_error) -> None:
    path, label = image
    one_line_error(main_cli("predict", legit_pt2, path), "--trust-code")  # without it: refused, one line
    r = main_cli("predict", legit_pt2, path, "--trust-code", "--json")
    assert r.code == 0, r.err
    top = json.loads(r.out)[0]["predictions"][0]
    assert top["index"] == label
    app = build_app(legit_pt2, trust_code=True)
    assert app.state.model_info["format"] == "pt2"
