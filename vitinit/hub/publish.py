"""Publish a converted backbone to the Hugging Face Hub: ``model.safetensors``, ``config.json``, a card.

Everything is checked before the first request: the repository name, that the input is a converted
backbone, and that a token exists. The token comes from ``token=`` or huggingface_hub's usual places
(``HF_TOKEN``, then the login cache); it is passed to huggingface_hub and never printed, logged or written.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import. We read them at call time
instead (the endpoint is passed to :class:`~huggingface_hub.HfApi`), so a process that sets them late is
still obeyed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from vitinit.errors import CheckpointFormatError, ConfigError, VitinitError, first_line
from vitinit.io.hub_http import HubLimits, HubUnreachable, bounded_hub

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


class PublishError(VitinitError, RuntimeError):
    """The Hub refused or could not be reached (no token, offline, HTTP error)."""


@dataclass(frozen=True)
class UploadFile:
    path_in_repo: str
    size: int
    origin: str  # a local path, or "generated"


@dataclass
class PublishResult:
    """What was (or, with ``dry_run``, would be) uploaded."""

    repo_id: str
    private: bool
    files: list[UploadFile]
    card: str
    config: dict
    dry_run: bool
    url: str | None = None  # the repository, after a real upload
    commit_url: str | None = None
    notice: str = ""  # what the publisher must know before sharing (e.g. a gated source license)


def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` as the Hub accepts it, or :class:`ConfigError`."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ConfigError(f"--repo must be ORG/NAME (one slash), got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"invalid repository name {repo_id!r}: {first_line(e, limit=None)}") from None
    return repo_id


def find_weights(folder_or_file: str | Path) -> Path:
    """The one converted ``.safetensors`` in a folder (or the file itself)."""
    path = Path(folder_or_file)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointFormatError(
                f"{path} is not a .safetensors file; publish the `--to vitdet` output"
            )
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    found = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if not found:
        raise CheckpointFormatError(
            f"{path} holds no converted weights (*.safetensors); "
            f"run `vitinit convert --to vitdet -o {path}/...` first"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CheckpointFormatError(
            f"{path} holds several .safetensors files ({names}); pass the one to publish"
        )
    return found[0]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (needs write access)")
    return token


def publish(
    folder_or_file: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    commit_message: str | None = None,
) -> PublishResult:
    """Upload a converted backbone with its ``config.json`` and model card to ``repo_id``.

    Args:
        folder_or_file: a ``--to vitdet`` ``.safetensors`` file, or a folder holding exactly one.
        repo_id: ``ORG/NAME``; created when missing (``private`` applies only then).
        dry_run: check and build everything, upload nothing, need no token.
        token: a Hub token; default ``HF_TOKEN`` or the login cache.
        base_model, license: override the card's metadata (defaults come from the weights' provenance).

    Raises:
        ConfigError: invalid ``repo_id``. CheckpointFormatError: no converted weights.
        PublishError: no token, offline, or the Hub refused.

    Example:
        >>> publish("out/mae_b.safetensors", "me/mae-vitdet-b", dry_run=True).files  # doctest: +SKIP
    """
    check_repo_id(repo_id)
    weights = find_weights(folder_or_file)
    if not dry_run:
        if _offline():
            raise PublishError(
                "HF_HUB_OFFLINE is set: publishing needs the network; unset it or use --dry-run"
            )
        token = _resolve_token(token)
    # Imported only now: the card needs the model config (torch, timm), and bad input should fail fast.
    from vitinit.hub.card import GATED, WEIGHTS_NAME, hub_config, model_card, read_vitdet_info

    info = read_vitdet_info(weights)
    notice = GATED[info.family][2] if info.family in GATED else ""
    if notice:
        logger.warning("%s (%s)", notice, GATED[info.family][1])

    card = str(model_card(info, repo_id, base_model=base_model, license=license))
    config = hub_config(info)
    config_bytes = (json.dumps(config, indent=2) + "\n").encode()
    card_bytes = card.encode()
    result = PublishResult(
        repo_id=repo_id, private=private, card=card, config=config, dry_run=dry_run, notice=notice,
        files=[
            UploadFile(WEIGHTS_NAME, weights.stat().st_size, str(weights)),
            UploadFile("config.json", len(config_bytes), "generated"),
            UploadFile("README.md", len(card_bytes), "generated"),
        ],
    )
    if dry_run:
        return result

    api = HfApi(endpoint=_endpoint(), token=token)
    operations = [
        CommitOperationAdd(WEIGHTS_NAME, str(weights)),
        CommitOperationAdd("config.json", config_bytes),
        CommitOperationAdd("README.md", card_bytes),
    ]
    limits = HubLimits.from_env()
    try:
        with bounded_hub(limits):  # timeouts, a retry budget and capped answers (vitinit.io.hub_http)
            repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.create_commit(
                repo_id, operations, repo_type="model",
                commit_message=commit_message or f"Upload {info.family} backbone converted by vitinit",
            )
    except HubUnreachable as e:
        raise PublishError(f"upload to {_endpoint()}/{repo_id} failed: {e}") from None
    except VitinitError:
        raise
    except Exception as e:  # huggingface_hub's HTTP errors, httpx connection errors, ...
        # The message names the URL and status; the token is masked in case a server echoes it back.
        message = str(limits.error) if limits.error else first_line(e, limit=None).replace(token, "***")[:300]
        raise PublishError(f"upload to {_endpoint()}/{repo_id} failed: {message}") from None
    result.url = str(repo)
    result.commit_url = commit.commit_url
    return result
