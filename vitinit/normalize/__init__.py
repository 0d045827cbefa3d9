"""Normalization: canonical checkpoints → a target architecture's state (pure tensor plumbing)."""

from vitinit.normalize.detection import detection_config, to_vitdet

__all__ = ["detection_config", "to_vitdet"]
