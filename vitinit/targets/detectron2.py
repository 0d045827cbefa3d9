"""``--to detectron2``: upstream ViTDet's layout (``vitinit.normalize.detectron2``), saved by ``torch.save``.

The file is ``{'model': state_dict, 'vitinit': {metadata}}`` (tensors and strings), loadable by
detectron2's ``DetectionCheckpointer`` as ``train.init_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

import vitinit
from vitinit.io.save import check_output_path, save_torch
from vitinit.normalize.detectron2 import PREFIX, normalize
from vitinit.normalize.options import Normalized

__all__ = ["FORMAT", "PREFIX", "normalize", "write"]

FORMAT = "vitinit.detectron2"


def write(path: str | Path, normalized: Normalized, *, overwrite: bool = False, **_) -> str:
    """Write ``{'model': ..., 'vitinit': ...}`` atomically; return the file's sha256.

    Unlike ``--to vitdet`` this holds the backbone in memory once (``torch.save`` needs every tensor), and
    the source's hash must be known before writing (it is in the metadata).
    """
    path = check_output_path(path, overwrite=overwrite)
    state = {k: v.load().contiguous() for k, v in normalized.tensors.items()}
    provenance = normalized.provenance
    meta = {
        "format": FORMAT,
        "vitinit_version": vitinit.__version__,
        "provenance": provenance.to_json(),
        "source_sha256": provenance.sha256 or "",
    }
    return save_torch(path, {"model": state, "vitinit": meta}, overwrite=overwrite)
