"""Targets: normalized weights → files a detector loads, one module each, registered in :data:`TARGETS`.

Each target module offers ``normalize(ckpt, options) -> Normalized`` (its layout, from
``vitinit.normalize``), ``write(path, normalized, ...) -> sha256`` and, when this project loads the file
back, ``read(path)``. :func:`vitinit.convert.normalize_source` and ``convert`` are its callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vitinit.targets import detectron2, vitdet


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str  # of the default output name
    normalize: Callable
    write: Callable
    read: Callable | None
    streams: bool  # written tensor by tensor, so the source can be hashed meanwhile


TARGETS: dict[str, Target] = {
    "vitdet": Target("vitdet", ".safetensors", vitdet.normalize, vitdet.write, vitdet.read, True),
    "detectron2": Target("detectron2", ".pth", detectron2.normalize, detectron2.write, None, False),
}
