"""``torch.hub`` entry points, e.g. ``torch.hub.load(REPO_DIR, "load_backbone", "mae.pth", source="local")``.

Thin on purpose: each entry point is the library call of the same name (:mod:`vitinit.api`).
"""

dependencies = ["torch", "torchvision", "timm", "safetensors", "omegaconf", "pycocotools"]

from vitinit import build_detector, load_backbone  # noqa: E402,F401  (torch.hub reads `dependencies` first)
