"""vitinit: ViT initializations → detection backbones → Mask R-CNN benchmarks.

Reproduces the setup of *Benchmarking Detection Transfer Learning with Vision Transformers*
(Li, Xie, Chen, Dollár, He, Girshick, 2021; arXiv 2111.11429).

The library (see :mod:`vitinit.api`)::

    import vitinit
    backbone = vitinit.load_backbone("mae_pretrain_vit_base.pth", size=1024)   # {"p2": …, …, "p6": …}
    weights = vitinit.convert_weights("mae_pretrain_vit_base.pth", to="detectron2")  # tensors + provenance
    model = vitinit.build_detector("mae-vitb")                                   # Mask R-CNN, weights loaded
    results = vitinit.run_bench("demo", ["schedule.iters=20"])                   # a whole run

``import vitinit`` stays light: torch and the rest load on first use of one of these names.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

__all__ = [
    "ConvertedWeights",
    "FeatureBackbone",
    "Recipe",
    "ShapeSpec",
    "__version__",
    "build_detector",
    "convert_weights",
    "load_backbone",
    "load_recipe",
    "run_bench",
]

def __getattr__(name: str) -> object:
    # PEP 562: the API module (and torch with it) is imported on first use, not by ``import vitinit``
    # (which every submodule triggers, and which ``vitinit --help`` pays for). By name, through importlib:
    # vitinit.api sits on top of the modules that import ``vitinit`` for its version.
    if name in __all__:
        return getattr(importlib.import_module("vitinit.api"), name)
    raise AttributeError(f"module 'vitinit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
