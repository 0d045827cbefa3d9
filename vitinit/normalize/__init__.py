"""Normalization: canonical checkpoints → a target architecture's state (pure tensor plumbing).

One module per target layout (``detection``: this project's backbone, ``detectron2``: ViTDet's), both
driven by :class:`~vitinit.normalize.options.NormalizeOptions`; ``lazy`` holds what they share.
"""

from vitinit.normalize.detection import detection_config, to_vitdet
from vitinit.normalize.options import Normalized, NormalizeOptions

__all__ = ["Normalized", "NormalizeOptions", "detection_config", "to_vitdet"]
