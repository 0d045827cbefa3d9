"""Upstream detectron2 for the optional side-by-side tests (never installed, never committed).

Point ``VITINIT_DETECTRON2_SRC`` at a detectron2 source tree (the folder that holds the ``detectron2``
package). Its modeling code runs on CPU on torchvision's ops; its C extension is replaced by an empty module,
which is enough for the backbone, the heads, the box coder, the poolers and the mask ops. Without the
variable (CI) the tests that ask for it are skipped.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest

ENV = "VITINIT_DETECTRON2_SRC"


def import_detectron2(module: str = "detectron2"):
    """``importlib.import_module(module)`` from ``$VITINIT_DETECTRON2_SRC``, or skip the calling test."""
    src = os.environ.get(ENV)
    if not src:
        pytest.skip(f"{ENV} is not set: the detectron2 cross-checks need a detectron2 source tree")
    if not (Path(src) / "detectron2" / "__init__.py").is_file():
        pytest.skip(f"{ENV}={src} holds no detectron2 package")
    if src not in sys.path:
        sys.path.insert(0, src)
    sys.modules.setdefault("detectron2._C", types.ModuleType("detectron2._C"))
    return importlib.import_module(module)
