"""The paper's model-complexity figures: parameters, FLOPs per part at the test size, measured images/s.

FLOPs come from torch's own ``FlopCounterMode`` (``torch.utils.flop_counter``), which counts a multiply-add as
2 FLOPs (fvcore, and so detectron2's ``analyze_model``, counts it as 1: halve ours to compare). They are
counted on fake tensors (``FakeTensorMode``), so ViT-L at 1024 costs neither memory nor minutes, part by part:

- the backbone trunk (ViT, or ResNet) on one ``size`` × ``size`` image (every test image is padded to it);
- the neck (the paper's adapter + FPN, or the ResNet's FPN) on the trunk's maps;
- the RPN head on every pyramid level;
- the box head + predictor on ``rpn_post_nms_top_n_test`` proposals (1000) and the mask head + predictor on
  ``box_detections_per_img`` detections (100): the test-time maxima, since the real numbers depend on the
  image. RoIAlign and NMS have no FLOP formula in torch and are not counted.

Images/s is measured, not derived: a real forward of the whole detector (batch 1) on the current device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from vitinit.io.files import write_json

COMPLEXITY_FILE = Path("analysis") / "complexity.json"


@dataclass
class Complexity:
    """Parameters and FLOPs per part (same keys, plus ``"total"``), at ``size`` × ``size``."""

    size: int
    params: dict[str, int]
    flops: dict[str, int]
    proposals: int
    detections: int
    images_per_s: float | None = None
    device: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _count(fn: Callable[[], object]) -> tuple[object, int]:
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return out, int(counter.get_total_flops())


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_parts(backbone: nn.Module) -> tuple[str, nn.Module, str]:
    """(trunk name, trunk module, neck name) of a ViT pyramid or a ResNet + FPN backbone."""
    vit = getattr(backbone, "vit", None)
    if vit is not None:
        return "ViT backbone", vit, "adapter + FPN" if getattr(backbone, "adapter", None) else "FPN"
    return f"{getattr(backbone, 'trunk_name', 'CNN')} backbone", backbone.body, "FPN"


def parameter_parts(model: nn.Module) -> dict[str, int]:
    """Parameters of each part of a torchvision Mask R-CNN built by vitinit; the parts sum to ``"total"``."""
    trunk_name, trunk, neck_name = backbone_parts(model.backbone)
    heads = model.roi_heads
    parts = {
        trunk_name: _n(trunk),
        neck_name: _n(model.backbone) - _n(trunk),
        "RPN": _n(model.rpn),
        "box head": _n(heads.box_head) + _n(heads.box_predictor),
        "mask head": _n(heads.mask_head) + _n(heads.mask_predictor),
    }
    other = _n(model) - sum(parts.values())
    if other:
        parts["other"] = other
    parts["total"] = _n(model)
    return parts


def count_flops(model: nn.Module, size: int) -> Complexity:
    """FLOPs and parameters per part at ``size`` × ``size`` (see the module docstring for what is counted).

    A model on the meta device is materialized as fake tensors in place (no memory); a real model keeps
    its weights. Example:
        >>> c = count_flops(build_mask_rcnn(cfg, device="meta"), 1024)  # doctest: +SKIP
        >>> c.flops["ViT backbone"] / 1e9  # doctest: +SKIP
        731.0
    """
    from torch._subclasses.fake_tensor import FakeTensorMode  # torch's own no-memory tensors

    cfg = getattr(model, "config", None)
    proposals = getattr(cfg, "rpn_post_nms_top_n_test", 1000)
    detections = getattr(cfg, "box_detections_per_img", 100)
    params = parameter_parts(model)
    trunk_name, trunk, neck_name = backbone_parts(model.backbone)
    was_training = model.training
    model.eval()
    try:
        # Real parameters stay real (converted on use); meta ones get fake storage.
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            if any(p.is_meta for p in model.parameters()):
                model.to_empty(device="cpu")
            device = next(model.parameters()).device
            x = torch.empty(1, 3, size, size, device=device)
            feats, f_trunk = _count(lambda: trunk(x))
            levels, f_neck = _count(lambda: model.backbone.pyramid_from(feats))
            _, f_rpn = _count(lambda: model.rpn.head(list(levels.values())))
            c = model.backbone.out_channels
            heads = model.roi_heads
            box_in = torch.empty(proposals, c, 7, 7, device=device)
            _, f_box = _count(lambda: heads.box_predictor(heads.box_head(box_in)))
            mask_in = torch.empty(detections, c, 14, 14, device=device)
            _, f_mask = _count(lambda: heads.mask_predictor(heads.mask_head(mask_in)))
    finally:
        model.train(was_training)
    flops = {trunk_name: f_trunk, neck_name: f_neck, "RPN": f_rpn, "box head": f_box, "mask head": f_mask}
    flops["total"] = sum(flops.values())
    return Complexity(size=size, params=params, flops=flops, proposals=proposals, detections=detections)


def measure_speed(model: nn.Module, size: int, *, iters: int = 3, warmup: int = 1) -> float:
    """Inference images/s of the whole detector (batch 1, ``size`` × ``size``) on the model's device.

    Every test image is resized and padded to ``size``², so one random image of that size is representative.
    Set the model's ``box_score_thresh`` to 0 first for random weights, or the mask head may see no boxes.
    """
    device = next(model.parameters()).device
    image = torch.rand(3, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model([image])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                model([image])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return iters / elapsed


def write_run_complexity(model: nn.Module, run_dir: str | Path, size: int) -> Path:
    """``RUN/analysis/complexity.json`` (parameters and FLOPs per part), which ``vitinit report`` shows."""
    path = Path(run_dir) / COMPLEXITY_FILE
    write_json(path, count_flops(model, size).to_dict())
    return path
