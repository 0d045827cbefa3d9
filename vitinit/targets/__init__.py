"""Writers: normalized weights → files a detector loads (``vitdet``: ours; ``detectron2``: ViTDet's)."""

TARGETS = ("vitdet", "detectron2")
