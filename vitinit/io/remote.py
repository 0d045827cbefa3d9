"""Turn what the user named as a source into a local path: a file, a hub repository, or an official release.

``resolve_source`` accepts
- a local path: returned as is (opening it is :func:`vitinit.io.load.open_checkpoint`'s job);
- ``hf://ORG/REPO[/FILE]``: fetched with huggingface_hub into its own cache (a whole repository becomes a
  folder with ``config.json`` and the weights);
- ``http(s)://...``: downloaded into vitinit's cache like an official file, without a hash to check;
- ``None``: the official checkpoint of ``family`` and ``model`` from :mod:`vitinit.io.registry`, downloaded
  once into ``$VITINIT_CACHE`` (default ``~/.cache/vitinit``), checked against its published hash, reused
  afterwards without touching the network.

Offline (``VITINIT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) or on any failure the result is a
:class:`DownloadError` with one line that names the URL and says how to pass a local file instead.
Environment variables are read when the function is called, not when this module is imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from vitinit.errors import CheckpointFormatError, DownloadError, first_line
from vitinit.io import hash_cache
from vitinit.io.env import env_flag
from vitinit.io.progress import byte_progress
from vitinit.io.registry import NOT_RELEASED, OFFICIAL_CHECKPOINTS, OfficialCheckpoint, official_checkpoint
from vitinit.io.save import atomic_path

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
TIMEOUT_S = 30.0  # per socket operation; a dead host fails at once (no retries here)
# What a hub repository needs for conversion: the config and one weights file (not optimizer states etc.).
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "pytorch_model.bin"]


def resolve_source(
    source: str | os.PathLike | None,
    *,
    family: str,
    model: str = "vit-b",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path | None:
    """Local path of ``source``, downloading it first when it is remote or omitted.

    Args:
        source: a path, ``hf://ORG/REPO[/FILE]``, an ``http(s)://`` URL, or None for the official release.
        family: ``--from`` (mae, beit, mocov3, supervised, random, auto); picks the official release.
        model: ``--model`` (vit-b, vit-l, ...); picks the official release.
        cache_dir: where downloads go (default ``$VITINIT_CACHE`` or ``~/.cache/vitinit``).
        progress: show a progress bar while downloading.

    Returns None only for ``family="random"`` without a source: random weights need no file.

    Example:
        >>> resolve_source(None, family="mae", model="vit-b")  # doctest: +SKIP
        PosixPath('/home/me/.cache/vitinit/mae/mae_pretrain_vit_base.pth')
    """
    if source is None:
        if family == "random":
            return None
        return fetch_official(family, model, cache_dir=cache_dir, progress=progress)
    text = os.fspath(source)
    if text.startswith(HF_SCHEME):
        return fetch_hf(text, cache_dir=cache_dir)
    if text.startswith(("http://", "https://")):
        name = text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "download"
        entry = OfficialCheckpoint(family, model, (text,), name, documented_in="the command line")
        return download(entry, cache_root(cache_dir) / "urls", progress=progress)
    return Path(text)


# ---------------------------------------------------------------------------------------------------------
# Official releases over HTTP(S)
# ---------------------------------------------------------------------------------------------------------


def fetch_official(family: str, model: str, *, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Path of the official ``family``/``model`` checkpoint in the cache, downloading it the first time."""
    entry = official_checkpoint(family, model)
    if entry is None:
        key = (family.lower(), model.lower())
        if family == "auto":
            raise CheckpointFormatError(
                "no source checkpoint given: pass a path, or --from {mae,beit,mocov3,supervised} to use the "
                "official release"
            )
        known = ", ".join(f"{f}/{m}" for f, m in OFFICIAL_CHECKPOINTS)
        why = NOT_RELEASED.get(key, f"no official {family} {model} checkpoint is known (known: {known})")
        raise DownloadError(f"{why}; pass a local checkpoint instead: vitinit convert PATH --from {family}")
    return download(entry, cache_root(cache_dir) / entry.family, progress=progress)


def download(entry: OfficialCheckpoint, folder: Path, *, progress: bool = True) -> Path:
    """``folder/entry.filename``, downloaded from the first URL that works unless it is there already."""
    target = folder / entry.filename
    if target.is_file() and (entry.size is None or target.stat().st_size == entry.size):
        log.info("using cached %s", target)
        return target
    hint = (
        f"download it yourself and pass the file: vitinit convert {entry.filename} --from {entry.family}"
        + (f" (or hf://{entry.hf_repo})" if entry.hf_repo else "")
    )
    if _offline():
        raise DownloadError(f"offline (VITINIT_OFFLINE/HF_HUB_OFFLINE): cannot download {entry.url}; {hint}")
    errors = []
    for url in entry.urls:
        try:
            _download_url(url, target, entry, progress=progress)
            return target
        except DownloadError as e:
            errors.append(str(e))
    raise DownloadError(f"{errors[0]}; {hint}")


def _download_url(url: str, target: Path, entry: OfficialCheckpoint, *, progress: bool) -> None:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "vitinit"})
    try:
        # A failed or interrupted download leaves nothing in the cache; a concurrent one of the same file
        # may land first (same bytes, checked against the same hash), so replacing it is fine.
        with atomic_path(target, overwrite=True) as tmp:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else entry.size
                with byte_progress(f"downloading {entry.filename}", expected, enabled=progress) as advance:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        md5.update(chunk)
                        sha256.update(chunk)
                        received += len(chunk)
                        advance(len(chunk))
            problem = _check(entry, received, expected, md5.hexdigest(), sha256.hexdigest())
            if problem:
                raise DownloadError(f"cannot download {url} ({problem})")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {url} (HTTP {e.code} {e.reason})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {url} ({first_line(reason, limit=None)})") from None
    # The digest is of the bytes just written: the first conversion of this file need not read it again.
    hash_cache.store(target, sha256.hexdigest())
    if not entry.has_hash:
        log.warning("%s: no published hash, content not verified (sha256 %s)", url, sha256.hexdigest())


def _check(entry: OfficialCheckpoint, received: int, expected: int | None, md5: str, sha256: str) -> str:
    """What is wrong with a finished download, or "" when nothing is."""
    if expected is not None and received != expected:
        return f"got {received} bytes of {expected}: connection cut short"
    if entry.size is not None and received != entry.size:
        return f"got {received} bytes, the release has {entry.size}"
    if entry.md5_prefix and not md5.startswith(entry.md5_prefix):
        return f"md5 {md5[:12]}… does not match the published {entry.md5_prefix}"
    if entry.sha256_prefix and not sha256.startswith(entry.sha256_prefix):
        return f"sha256 {sha256[:12]}… does not match the published {entry.sha256_prefix}"
    return ""


def cache_root(cache_dir: Path | None) -> Path:
    """Where downloads go: ``cache_dir``, else ``$VITINIT_CACHE``, else ``~/.cache/vitinit``."""
    return Path(cache_dir) if cache_dir is not None else hash_cache.cache_dir()


def _offline() -> bool:
    return env_flag("VITINIT_OFFLINE") or env_flag("HF_HUB_OFFLINE")


# ---------------------------------------------------------------------------------------------------------
# Hugging Face hub
# ---------------------------------------------------------------------------------------------------------


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """``hf://ORG/REPO[/PATH/IN/REPO]`` → (``ORG/REPO``, path or None)."""
    parts = [p for p in uri[len(HF_SCHEME):].split("/") if p]
    if len(parts) < 2:
        raise DownloadError(f"{uri}: expected hf://ORG/REPO or hf://ORG/REPO/FILE")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def fetch_hf(uri: str, *, cache_dir: Path | None = None) -> Path:
    """Local path of a hub file (``hf://ORG/REPO/FILE``) or repository folder (``hf://ORG/REPO``).

    ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read now and passed explicitly: huggingface_hub itself reads
    them once, at import. Offline, only what is already in the hub cache is used.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    from vitinit.io.hub_http import bounded_hub

    repo_id, filename = parse_hf_uri(uri)
    kwargs: dict = {
        "endpoint": os.environ.get("HF_ENDPOINT") or None,
        "local_files_only": _offline(),
        "cache_dir": _hf_cache(cache_dir),
    }
    limits = None
    try:
        with bounded_hub() as limits:
            if filename is not None:
                return Path(hf_hub_download(repo_id, filename, **kwargs))
            return Path(snapshot_download(repo_id, allow_patterns=HF_ALLOW_PATTERNS, **kwargs))
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, not found, ...): one line each
        endpoint = kwargs["endpoint"] or "https://huggingface.co"
        where = f"{endpoint}/{repo_id}" + (f"/{filename}" if filename else "")
        if limits is not None and limits.error is not None:  # a bound broke, maybe under another error
            state = str(limits.error)
        elif kwargs["local_files_only"]:
            state = "offline and not in the hub cache"
        elif {c.__name__ for c in type(e).__mro__} & _HF_NOT_FOUND:
            state = "not found on the hub"
        else:
            state = first_line(e)
        raise DownloadError(
            f"cannot fetch {uri} from {where} ({state}); download it yourself and pass the local file/folder"
        ) from None


# huggingface_hub's "not found" errors, by name: their module moved between releases (errors / utils).
_HF_NOT_FOUND = {"RepositoryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError"}


def _hf_cache(cache_dir: Path | None) -> str | None:
    if cache_dir is not None:
        return str(Path(cache_dir) / "hf")
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


