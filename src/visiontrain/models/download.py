"""Fetching pretrained weights into the standard caches, verified before use.

Two sources, each through its own library's downloader and into its own cache, so a file fetched by
visiontrain is one torchvision or timm would find, and the other way round:

- **torch.hub** (torchvision's weights, timm configs that name a URL, ``--pretrained https://…``): into
  ``<torch hub dir>/checkpoints/`` with :func:`torch.hub.download_url_to_file` — a progress bar on stderr, the
  bytes written to a ``.partial`` file that is moved into place only when complete, and the SHA-256 prefix that
  the file name carries (``resnet18-f37072fd.pth``) checked before the move. ``VISIONTRAIN_WEIGHTS_MIRROR``
  (a base URL) fetches the same paths from a mirror instead (a company's proxy or artifact store).
- **the Hugging Face Hub** (timm's ``pretrained_cfg.hf_hub_id``, ``--pretrained hf-hub:ORG/NAME``): with
  ``huggingface_hub.hf_hub_download`` into its cache (``HF_HUB_CACHE``/``HF_HOME``; ``HF_ENDPOINT`` names a
  mirror), which downloads into an ``.incomplete`` file and checks the size; the blob's SHA-256 is then checked
  against the name the Hub gave it (its LFS hash), on every use.

Offline (``--offline``, ``HF_HUB_OFFLINE=1``) or without a network, a file missing from the cache is one line:
which file, where to put it, where it comes from.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

import torch

from visiontrain.errors import CheckpointError, ModelError
from visiontrain.optional import require

MIRROR_ENV = "VISIONTRAIN_WEIGHTS_MIRROR"
_TRUE = {"1", "true", "yes", "on"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsUnavailable(ModelError):
    """Pretrained weights that are not in the cache and cannot be downloaded now (offline, no network)."""


def is_offline(flag: bool = False) -> bool:
    """``--offline``, or the Hub's own switch ``HF_HUB_OFFLINE=1`` (read now, not when a library was imported)."""
    return flag or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_file(url: str) -> Path:
    """Where torch.hub caches the file of ``url``: ``<torch hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def source_url(url: str) -> str:
    """``url``, or the same path under ``$VISIONTRAIN_WEIGHTS_MIRROR`` when that is set.

    >>> os.environ[MIRROR_ENV] = "http://weights.example.corp/pytorch"
    >>> source_url("https://download.pytorch.org/models/resnet18-f37072fd.pth")
    'http://weights.example.corp/pytorch/models/resnet18-f37072fd.pth'
    >>> del os.environ[MIRROR_ENV]
    """
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return mirror.rstrip("/") + urlparse(url).path if mirror else url


def hash_prefix(path: Path) -> str:
    """The SHA-256 prefix a torch.hub file name carries (``resnet18-f37072fd.pth`` → ``f37072fd``), or ''."""
    match = torch.hub.HASH_REGEX.search(path.name)
    return match.group(1) if match else ""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(url: str, what: str, offline: bool = False) -> Path:
    """The torch hub cache file of ``url``, downloaded first when it is missing (see the module docstring)."""
    path = hub_file(url)
    if path.is_file():
        return path
    where = f"put {path.name} into {path.parent} (get it from {url})"
    if is_offline(offline):
        raise WeightsUnavailable(f"{what}: {path.name} is not in the torch hub cache and downloads are off "
                                 f"(--offline / HF_HUB_OFFLINE): {where}, or set TORCH_HOME to a folder whose "
                                 "hub/checkpoints/ has it")
    source = source_url(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # torch.hub writes <name>.<uuid>.partial and moves it into place only once complete and verified
        torch.hub.download_url_to_file(source, str(path), hash_prefix=hash_prefix(path) or None, progress=True)
    except urllib.error.HTTPError as exc:
        raise WeightsUnavailable(f"{what}: {source} answered HTTP {exc.code} ({exc.reason}); {where}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsUnavailable(f"{what}: cannot download {source} ({reason}); {where}, or name a mirror that has "
                                 f"it: {MIRROR_ENV}=https://your.mirror") from None
    except RuntimeError as exc:  # torch.hub's hash check: the .partial file is already removed
        raise CheckpointError(f"{what}: the file downloaded from {source} is not the one published ({exc}); "
                              "nothing was kept: run again to retry, or check the mirror") from None
    return path


def check_hub_hash(path: Path, url: str) -> None:
    """A cached file's SHA-256 must begin with the hex digits its name carries (torch.hub checks that only while
    downloading: a file saved under that name later, or damaged since, is caught here). A mismatch is removed
    from the cache, so the next run downloads it again.

    >>> from hashlib import sha256
    >>> good = Path(f"w-{sha256(b'weights').hexdigest()[:8]}.pth")
    >>> _ = good.write_bytes(b"weights")
    >>> check_hub_hash(good, "https://example.org/" + good.name)  # passes: nothing to say
    """
    prefix = hash_prefix(path)
    if not prefix:
        return
    digest = sha256_of(path)[: len(prefix)]
    if digest != prefix:
        path.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: its SHA-256 begins {digest}, not {prefix} as its name says, so it is not the "
                              f"file published at {url} (a broken download, or other weights saved under its name); "
                              "removed it from the cache: run again to download it, or pass your own weights by "
                              "path (--pretrained FILE)")


def hf_cache_dir() -> str | None:
    """The Hub cache as the environment says it now (``HF_HUB_CACHE``, ``HF_HOME``), or None (the library's)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def fetch_hf(repo_id: str, filename: str, what: str, offline: bool = False, revision: str | None = None,
             missing_ok: bool = False) -> Path | None:
    """``filename`` of Hub repository ``repo_id`` in the Hub cache, downloaded first when it is missing and allowed;
    its SHA-256 checked against the LFS hash the Hub named the blob by. ``missing_ok``: None when the repository has
    no such file (timm repositories have ``model.safetensors`` or ``pytorch_model.bin``)."""
    hub = require("huggingface_hub", "timm")
    errors = require("huggingface_hub.errors", "timm")
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it once, at import
    origin = f"{(endpoint or 'https://huggingface.co').rstrip('/')}/{repo_id}"
    remote_missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    try:
        path = Path(hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=hf_cache_dir(),
                                        endpoint=endpoint, local_files_only=is_offline(offline)))
    except errors.LocalEntryNotFoundError:  # offline, or the Hub did not answer: not in the cache either
        cache = hf_cache_dir() or "~/.cache/huggingface/hub"
        why = "downloads are off (--offline / HF_HUB_OFFLINE)" if is_offline(offline) else "the Hub cannot be reached"
        raise WeightsUnavailable(f"{what}: {filename} of {repo_id} is not in the Hugging Face cache ({cache}) and "
                                 f"{why}: fetch it on a connected machine with `hf download {repo_id} {filename}` "
                                 f"and copy that cache over (from {origin}), or pass the file itself "
                                 "(--pretrained path/to/model.safetensors)") from None
    except remote_missing:
        if missing_ok:
            return None
        raise WeightsUnavailable(f"{what}: {origin} has no file {filename}") from None
    except errors.RepositoryNotFoundError:
        raise WeightsUnavailable(f"{what}: there is no repository {origin} (or it needs a login: set HF_TOKEN)") \
            from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise WeightsUnavailable(f"{what}: cannot download {filename} from {origin} ({str(exc).splitlines()[0]}); "
                                 "run again to retry, or pass the file itself (--pretrained FILE)") from None
    _check_blob(path, f"{origin}/{filename}")
    return path


def _check_blob(path: Path, origin: str) -> None:
    """The Hub names an LFS blob by its SHA-256: a blob that does not hash to its name is removed."""
    blob = path.resolve()
    if not _SHA256.match(blob.name):
        return  # a small git-stored file (config.json) is named by its git hash, not checked here
    digest = sha256_of(blob)
    if digest != blob.name:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: its SHA-256 is {digest[:12]}…, not {blob.name[:12]}… as the Hub published it "
                              f"({origin}); removed it from the cache: run again to download it")
