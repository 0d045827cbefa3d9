"""The initialization families vitinit knows, in one place (readers, registry, bench, plots, model cards).

A family is where a backbone's weights came from (its pre-training method), not a file layout: one family
can arrive in several layouts (e.g. DINOv2 as the official hub file, a timm folder or a transformers one).
This module imports nothing, so every layer may use it.
"""

from __future__ import annotations

# The paper's five initializations (Li et al. 2021), in the order its tables use.
PAPER_FAMILIES = ("random", "supervised", "mocov3", "beit", "mae")
# Initializations added since, read and verified the same way.
NEWER_FAMILIES = ("dinov2", "beitv2", "data2vec", "dinov3", "eva02", "clip", "siglip")
# Every family with a reader (``random`` is drawn, not read).
FAMILIES = PAPER_FAMILIES + NEWER_FAMILIES
# Display names for tables, plots and model cards.
DISPLAY_NAMES = {
    "random": "random",
    "supervised": "supervised",
    "mocov3": "MoCo v3",
    "beit": "BEiT",
    "mae": "MAE",
    "dinov2": "DINOv2",
    "beitv2": "BEiT v2",
    "data2vec": "data2vec",
    "dinov3": "DINOv3",
    "eva02": "EVA-02",
    "clip": "CLIP",
    "siglip": "SigLIP",  # SigLIP and SigLIP 2: the same fixed-resolution tower
}

__all__ = ["DISPLAY_NAMES", "FAMILIES", "NEWER_FAMILIES", "PAPER_FAMILIES"]
