"""Anchors: exact cell anchors at each feature location, as detectron2's ``DefaultAnchorGenerator``.

torchvision's ``AnchorGenerator`` rounds each cell anchor to whole pixels (up to 0.49 px off, i.e. up to
3 % of a 32-px anchor); detectron2 keeps them exact. A cell anchor of size s and aspect ratio r = h / w
has area s² and is centred on the location's top-left corner (offset 0.0): w = s / √r, h = s · √r.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> torch.Tensor:
    """(sizes × ratios, 4) anchors (x1, y1, x2, y2) around (0, 0); sizes outer, ratios inner (detectron2)."""
    out = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


class CellAnchorGenerator(nn.Module):
    """Anchors for every location of every level, ordered (y, x, anchor) as the RPN head's outputs.

    Each level i has stride ``strides[i]`` and the anchor ``sizes[i]`` (one or more) × every aspect ratio.
    Anchors are float32 whatever the autocast, as are the boxes decoded from them.
    """

    def __init__(
        self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[float, ...], strides: tuple[int, ...]
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"one tuple of anchor sizes per level: {len(sizes)} for {len(strides)} levels")
        self.strides = tuple(strides)
        for i, level_sizes in enumerate(sizes):
            # Buffers, not parameters: they move with .to(device) and are not saved in the state dict.
            self.register_buffer(f"cell_{i}", cell_anchors(tuple(level_sizes), tuple(aspect_ratios)), False)
        self.num_anchors = len(sizes[0]) * len(aspect_ratios)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, (H · W · A, 4) anchors for maps of that level's size (the same for every image)."""
        out = []
        for i, (feature, stride) in enumerate(zip(features, self.strides, strict=True)):
            cell = getattr(self, f"cell_{i}")
            h, w = feature.shape[-2:]
            ys = torch.arange(h, dtype=torch.float32, device=cell.device) * stride
            xs = torch.arange(w, dtype=torch.float32, device=cell.device) * stride
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            x, y = x.reshape(-1), y.reshape(-1)
            shifts = torch.stack([x, y, x, y], dim=1)
            out.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return out
