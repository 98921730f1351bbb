"""Pretrained weights downloaded, verified and cached, through a real HTTP server on 127.0.0.1 that serves files in
torch.hub's layout (``/models/<name>-<sha256 prefix>.pth``, reached through ``VISIONTRAIN_WEIGHTS_MIRROR`` or a URL)
and in the Hugging Face Hub's (``/<org>/<repo>/resolve/<revision>/<file>``, reached through ``HF_ENDPOINT``).

The weights are real state dicts of real architectures (random values), in the exact on-disk formats: a
``torch.save`` .pth for torch.hub, ``model.safetensors`` + ``config.json`` for the Hub."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save as safetensors_bytes

from visiontrain.config import ModelConfig
from visiontrain.errors import CheckpointError, ModelError
from visiontrain.models import ModelInput, create_model
from visiontrain.models.assembly import build_model

timm = pytest.importorskip("timm")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMM_REPO = "timm/test_efficientnet.r160_in1k"  # timm's default weights for test_efficientnet (356k parameters)


class WeightsServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (URL path → bytes); a path in ``cut`` gets half its bytes, then the connection closes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}  # the Hub's ETag (the LFS sha256) when it is not the bytes' own
        self.cut: set[str] = set()
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add_hub(self, repo: str, name: str, data: bytes) -> str:
        path = f"/{repo}/resolve/main/{name}"
        self.files[path] = data
        return path


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WeightsServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _head(self) -> bytes | None:
        path = self.path.split("?")[0]
        self.server.requests.append((self.command, path))
        data = self.server.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + self.server.etags.get(path, hashlib.sha256(data).hexdigest()) + '"')
        self.end_headers()
        return data

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        data = self._head()
        if data is None:
            return
        path = self.path.split("?")[0]
        if path in self.server.cut:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the transfer dies mid-way
            return
        self.wfile.write(data)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WeightsServer]:
    """The loopback server, with empty torch hub and Hub caches, and the libraries pointed at the server."""
    srv = WeightsServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("VISIONTRAIN_WEIGHTS_MIRROR", srv.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield srv
    srv.shutdown()
    srv.server_close()


def _pth(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def _hub_named(srv: WeightsServer, stem: str, data: bytes) -> str:
    """``/models/<stem>-<sha256 prefix>.pth`` served: the name carries its hash, as download.pytorch.org's do."""
    path = f"/models/{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    srv.files[path] = data
    return path


def _same(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _timm_repo(srv: WeightsServer) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = timm.create_model("test_efficientnet").state_dict()
    cfg = timm.get_pretrained_cfg("test_efficientnet").to_dict()
    srv.add_hub(TIMM_REPO, "model.safetensors", safetensors_bytes({k: v.contiguous() for k, v in state.items()}))
    srv.add_hub(TIMM_REPO, "config.json", json.dumps({"architecture": "test_efficientnet", "num_classes": 1000,
                                                       "pretrained_cfg": cfg}).encode())
    return state


def test_url_download_is_hash_checked_cached_and_used_offline_next_time(server: WeightsServer, tmp_path: Path,
                                                                        capfd: pytest.CaptureFixture[str]) -> None:
    model = create_model("small_cnn", ModelInput(3, 16, 7))
    path = _hub_named(server, "small", _pth(model))
    cfg = ModelConfig("small_cnn", pretrained=server.url + path)
    built = build_model(cfg, ModelInput(3, 16, 7))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(path).name
    assert cached.is_file() and [f.name for f in cached.parent.iterdir()] == [cached.name]  # no .partial left
    assert "100%" in capfd.readouterr().err  # torch.hub's progress bar, on stderr
    assert _same(built.model, model.state_dict())
    server.files.clear()  # the server has nothing now: the second run reads the cache, offline
    again = build_model(ModelConfig("small_cnn", pretrained=server.url + path, offline=True), ModelInput(3, 16, 7))
    assert _same(again.model, model.state_dict())
    assert built.pretrained is not None and built.pretrained.file == str(cached)


def test_a_download_that_does_not_match_its_published_hash_is_refused_and_nothing_is_kept(
        server: WeightsServer, tmp_path: Path) -> None:
    """squeezenet1_1's DEFAULT weights through the mirror: the bytes served are not the published file."""
    url = torchvision.models.SqueezeNet1_1_Weights.DEFAULT.url
    name = Path(url).name
    server.files[f"/models/{name}"] = _pth(torchvision.models.squeezenet1_1())
    with pytest.raises(CheckpointError) as err:
        build_model(ModelConfig("squeezenet1_1", pretrained="DEFAULT"), ModelInput(3, 64, 3))
    message = str(err.value)
    assert "\n" not in message and f"{server.url}/models/{name} is not the one published" in message
    assert "nothing was kept" in message
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []  # not the file, not a .partial


def test_a_cached_file_whose_hash_does_not_match_its_name_is_removed(server: WeightsServer, tmp_path: Path) -> None:
    model = create_model("small_cnn", ModelInput(3, 16, 7))
    path = _hub_named(server, "small", _pth(model))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(path).name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_pth(create_model("small_cnn", ModelInput(3, 16, 7))))  # other weights under that name
    with pytest.raises(CheckpointError, match="removed it from the cache: run again to download it"):
        build_model(ModelConfig("small_cnn", pretrained=server.url + path), ModelInput(3, 16, 7))
    assert not cached.exists()
    built = build_model(ModelConfig("small_cnn", pretrained=server.url + path), ModelInput(3, 16, 7))  # fetched
    assert _same(built.model, model.state_dict())


def test_a_download_cut_off_mid_way_leaves_nothing_and_the_next_run_retries(server: WeightsServer,
                                                                            tmp_path: Path) -> None:
    model = create_model("small_cnn", ModelInput(3, 16, 7))
    path = _hub_named(server, "small", _pth(model))
    server.cut.add(path)
    with pytest.raises(CheckpointError, match="nothing was kept: run again to retry"):
        build_model(ModelConfig("small_cnn", pretrained=server.url + path), ModelInput(3, 16, 7))
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []
    server.cut.clear()
    build_model(ModelConfig("small_cnn", pretrained=server.url + path), ModelInput(3, 16, 7))
    assert [m for m, p in server.requests if p == path] == ["GET", "GET"]


@pytest.mark.parametrize("how", ["flag", "env", "no network"])
def test_offline_without_a_cache_is_one_line_naming_file_folder_and_source(how: str, server: WeightsServer,
                                                                           tmp_path: Path, monkeypatch) -> None:
    weights = torchvision.models.SqueezeNet1_1_Weights.DEFAULT
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if how == "no network":
        monkeypatch.setenv("VISIONTRAIN_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig("squeezenet1_1", pretrained="DEFAULT", offline=how == "flag"), ModelInput(3, 64, 3))
    message = str(err.value)
    assert "\n" not in message
    assert f"put {Path(weights.url).name} into {tmp_path / 'torch' / 'hub' / 'checkpoints'} (get it from " \
           f"{weights.url})" in message
    assert ("downloads are off" in message) == (how != "no network")
    assert server.requests == []


def test_timm_default_weights_come_from_the_hub_with_their_preprocessing_and_classes(server: WeightsServer,
                                                                                    tmp_path: Path) -> None:
    state = _timm_repo(server)
    built = build_model(ModelConfig("timm/test_efficientnet", pretrained="DEFAULT"), ModelInput(3, 160, 3))
    own = built.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("classifier."))
    assert built.head_replaced and own["classifier.weight"].shape[0] == 3
    record = built.pretrained_record()
    assert record["source"] == f"hf-hub:{TIMM_REPO}" and record["size"] == 160
    assert record["eval_transforms"] == [{"name": "Resize", "size": 168, "interpolation": "bicubic"},
                                         {"name": "CenterCrop", "size": [160, 160]}]
    assert record["classes"][:2] == ["tench", "goldfish"] and len(record["classes"]) == 1000
    blobs = list((tmp_path / "hf").glob("models--timm--test_efficientnet.r160_in1k/blobs/*"))
    assert [b.name for b in blobs] == [hashlib.sha256(server.files[f"/{TIMM_REPO}/resolve/main/model.safetensors"])
                                       .hexdigest()]  # the verified weights, no .incomplete file
    server.files.clear()  # offline next time: from the Hub cache
    build_model(ModelConfig("timm/test_efficientnet", pretrained="DEFAULT", offline=True), ModelInput(3, 160, 3))


def test_hub_weights_that_do_not_hash_to_their_published_sha256_are_removed(server: WeightsServer,
                                                                            tmp_path: Path) -> None:
    _timm_repo(server)
    path = f"/{TIMM_REPO}/resolve/main/model.safetensors"
    server.etags[path] = hashlib.sha256(b"the published file").hexdigest()
    with pytest.raises(CheckpointError, match=r"not .* as the Hub published it"):
        build_model(ModelConfig("timm/test_efficientnet", pretrained="hf-hub:" + TIMM_REPO), ModelInput(3, 160, 3))
    assert not list((tmp_path / "hf").glob("models--*/blobs/" + server.etags[path]))


def test_hub_offline_without_a_cache_is_one_line(server: WeightsServer, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig("timm/test_efficientnet", pretrained="DEFAULT"), ModelInput(3, 160, 3))
    message = str(err.value)
    assert "\n" not in message and "model.safetensors of timm/test_efficientnet.r160_in1k is not in the Hugging " \
        "Face cache" in message and "downloads are off" in message and server.requests == []


def test_bare_pretrained_trains_a_photo_folder_with_the_weights_input(server: WeightsServer, tmp_path: Path,
                                                                       shape_folder, main_cli, one_line_error) -> None:
    """The issue's command: ``visiontrain train --data photos/ --model … --pretrained`` on a machine with internet
    (the loopback server); then --offline without the cache is one line."""
    _timm_repo(server)
    photos = shape_folder(tmp_path / "photos", 2, size=40)
    shape_folder(photos, 2, size=48, seed=1, suffix=".jpg")  # photos of mixed sizes
    args = ["train", "--data", photos, "--model", "timm/test_efficientnet", "--pretrained", "--recipe", "finetune",
            "--epochs", "2", "--batch-size", "6", "--plots", "off", "--out", tmp_path / "runs"]
    result = main_cli(*args, "--name", "online")
    assert result.code == 0, result.err
    assert "epoch 2: unfroze" in result.err  # the recipe: the head alone first, then everything
    run = tmp_path / "runs" / "online"
    record = json.loads((run / "pretrained.json").read_text())
    assert record["source"] == f"hf-hub:{TIMM_REPO}" and record["classes"][0] == "tench"
    meta = json.loads(next((run / "checkpoints").glob("*.json")).read_text())
    assert meta["preprocessing"]["size"] == 160  # the weights' input side, not the photos' 40 px
    assert meta["preprocessing"]["eval_transforms"][0] == {"name": "Resize", "size": 168, "interpolation": "bicubic"}
    shutil.rmtree(tmp_path / "hf")
    one_line_error(main_cli(*args, "--name", "offline", "--offline"), "is not in the Hugging Face cache",
                   "downloads are off", f"hf download {TIMM_REPO} model.safetensors")
