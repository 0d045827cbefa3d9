"""``--to vitdet``: the paper's detection backbone as ``.safetensors`` with the conversion in its metadata.

The tensors are exactly ``DetectionViT(config).state_dict()``. Metadata (all values str):
``format="vitinit.vitdet"``, ``format_version``, ``vitinit_version``, ``backbone_config``
(``ViTBackboneConfig.to_json()``), ``provenance`` (``Provenance.to_dict()`` as JSON, normalization filled)
and ``source_sha256``. An optional ``.pth`` copy holds ``{'model': state_dict, 'metadata': {...}}`` (plain
tensors and strings, so ``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

import vitinit
from vitinit.canonical import LazyTensor, Provenance
from vitinit.errors import CheckpointFormatError, first_line, quote
from vitinit.io.load import open_checkpoint
from vitinit.io.save import save_torch, write_safetensors
from vitinit.modeling.vit import ViTBackboneConfig
from vitinit.normalize.detection import normalize
from vitinit.normalize.options import Normalized

__all__ = ["FORMAT", "normalize", "read", "write"]

FORMAT = "vitinit.vitdet"
FORMAT_VERSION = "1"
SHA256_HEX_LENGTH = 64


@dataclass
class VitdetWeights:
    config: ViTBackboneConfig
    state_dict: dict[str, torch.Tensor]
    provenance: dict
    metadata: dict[str, str]


def vitdet_metadata(config: ViTBackboneConfig, provenance: Provenance) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vitinit_version": vitinit.__version__,
        "backbone_config": config.to_json(),
        "provenance": provenance.to_json(),
        "source_sha256": provenance.sha256 or "",
    }


def write_vitdet(
    path: str | Path,
    config: ViTBackboneConfig,
    tensors: Mapping[str, LazyTensor],
    provenance: Provenance,
    *,
    overwrite: bool = False,
    progress: bool = False,
    source_sha256: Callable[[], str] | None = None,
    before_publish: Callable[[], None] | None = None,
) -> str:
    """Stream ``tensors`` into ``path`` atomically; return the written file's sha256.

    ``source_sha256``, when given, may block until the source's hash is known (another thread computes it
    while the tensors are written, instead of before any byte is written); ``provenance.sha256`` is then
    set and the header rewritten at the end. ``before_publish``: see
    :func:`~vitinit.io.save.write_safetensors`.
    """
    if source_sha256 is None:
        return write_safetensors(
            path, tensors, vitdet_metadata(config, provenance), overwrite=overwrite, progress=progress,
            before_publish=before_publish,
        )
    provisional = Provenance.from_dict(provenance.to_dict())
    provisional.sha256 = "0" * SHA256_HEX_LENGTH  # a sha256 hex digest always has this length

    @functools.cache  # one source hash, two metadata entries
    def final() -> dict[str, str]:
        provenance.sha256 = source_sha256()
        return vitdet_metadata(config, provenance)

    late = {key: (lambda key=key: final()[key]) for key in ("provenance", "source_sha256")}
    return write_safetensors(
        path, tensors, vitdet_metadata(config, provisional), overwrite=overwrite, progress=progress,
        late_metadata=late, before_publish=before_publish,
    )


def write(
    path: str | Path,
    normalized: Normalized,
    *,
    overwrite: bool = False,
    progress: bool = False,
    source_sha256: Callable[[], str] | None = None,
    before_publish: Callable[[], None] | None = None,
) -> str:
    """The target table's writer: :func:`write_vitdet` of a :class:`Normalized` result."""
    return write_vitdet(
        path, normalized.config, normalized.tensors, normalized.provenance, overwrite=overwrite,
        progress=progress, source_sha256=source_sha256, before_publish=before_publish,
    )


def write_vitdet_pth(path: str | Path, weights_path: str | Path, *, overwrite: bool = False) -> str:
    """A ``.pth`` copy of a written ``.safetensors`` backbone (same tensors, metadata); returns its sha256."""
    w = read_vitdet(weights_path)
    return save_torch(path, {"model": w.state_dict, "metadata": w.metadata}, overwrite=overwrite)


def read_vitdet(path: str | Path) -> VitdetWeights:
    """Load a ``--to vitdet`` file (``.safetensors`` or its ``.pth`` copy), checking its format marker."""
    raw = open_checkpoint(path)
    if raw.container == "safetensors":
        metadata, state = dict(raw.metadata), raw.tensors()
    else:
        node = raw.tree.get("metadata")
        metadata = {str(k): v for k, v in node.items()} if isinstance(node, Mapping) else {}
        state = raw.tensors("model") if isinstance(raw.tree.get("model"), Mapping) else {}
    config, provenance = parse_vitdet_metadata(path, metadata)
    return VitdetWeights(config, {k: t.load() for k, t in state.items()}, provenance, metadata)


def is_vitdet(metadata: Mapping[str, str]) -> bool:
    return metadata.get("format") == FORMAT


def parse_vitdet_metadata(path: str | Path, metadata: Mapping[str, str]) -> tuple[ViTBackboneConfig, dict]:
    """(backbone config, provenance) from a vitdet file's metadata; one-line errors for anything else."""
    if not is_vitdet(metadata):
        raise CheckpointFormatError(
            f"{path} is not a converted vitinit backbone (format {quote(metadata.get('format'))}, "
            f"expected {FORMAT!r}); make one with `vitinit convert --to vitdet`"
        )
    try:
        config = ViTBackboneConfig.from_json(metadata["backbone_config"])
        provenance = json.loads(metadata.get("provenance") or "{}")
    except (KeyError, ValueError, TypeError, RecursionError) as e:  # RecursionError: nested 100 000 deep
        raise CheckpointFormatError(f"{path}: unreadable vitdet metadata ({first_line(e)})") from None
    return config, provenance


read = read_vitdet
