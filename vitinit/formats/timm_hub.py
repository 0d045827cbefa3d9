"""timm models as the Hugging Face hub serves them: ``config.json`` (timm's) + ``model.safetensors``.

timm's ``save_pretrained``-style folder (``timm.models.push_to_hf_hub`` / ``_hub.save_for_hf``) holds
``config.json`` with ``architecture`` (``vit_base_patch16_224``), optional ``model_args`` (the kwargs the
model was built with, e.g. ``num_heads``) and ``pretrained_cfg`` (``tag`` such as ``augreg2_in21k_ft_in1k``
or ``mae``, mean/std...), beside the weights in timm's state-dict layout. The architecture and tag name the
family, so detection needs no key scores; the tensors are then read by that family's reader, with the head
count from ``model_args.num_heads`` or, failing that, the architecture's own default (the timm model built
on the meta device: nothing is allocated or downloaded).
"""

from __future__ import annotations

import logging

import vitinit.formats.beit as beit
import vitinit.formats.clip as clip
import vitinit.formats.dinov2 as dinov2
import vitinit.formats.dinov3 as dinov3
import vitinit.formats.eva02 as eva02
import vitinit.formats.mae as mae
import vitinit.formats.siglip as siglip
import vitinit.formats.supervised as supervised
from vitinit.canonical import Checkpoint
from vitinit.errors import CheckpointFormatError
from vitinit.formats._common import DECLARED, Score
from vitinit.io.load import RawCheckpoint

logger = logging.getLogger(__name__)

FAMILIES = ("supervised", "mae", "dinov2", "beit", "beitv2", "dinov3", "eva02", "clip", "siglip")
_READERS = {
    "supervised": supervised, "mae": mae, "dinov2": dinov2, "beit": beit, "beitv2": beit, "dinov3": dinov3,
    "eva02": eva02, "clip": clip, "siglip": siglip,
}
# Architectures whose weights are none of the supported families, whatever their keys look like.
_REFUSED = ("eva", "dino_", "samvit", "flexivit", "naflex")


def _config(raw: RawCheckpoint) -> dict:
    return raw.config or {} if raw.container == "timm-folder" else {}


def family_of(architecture: str, tag: str) -> tuple[str | None, str]:
    """(family or None, evidence) for a timm architecture name and pretrained tag."""
    seen = f"config.json architecture {architecture!r}" + (f", tag {tag!r}" if tag else "")
    if "dinov2" in architecture:
        return "dinov2", seen
    if "dinov3" in architecture:
        return "dinov3", seen
    if architecture.startswith("eva02_") and "clip" not in architecture:
        return "eva02", seen
    if architecture.startswith("beitv2_"):
        return "beitv2", seen
    if architecture.startswith("beit_"):
        return "beit", seen
    if any(word in architecture for word in _REFUSED) or tag.startswith("dino"):
        return None, seen
    if architecture.startswith("vit_") and "_siglip" in architecture:
        return "siglip", seen
    if architecture.startswith("vit_") and "_clip" in architecture:
        return "clip", seen
    if "clip" in architecture or "siglip" in architecture:  # e.g. timm's CLIP ConvNeXt / ResNet towers
        return None, seen
    if architecture.startswith(("vit_", "deit")):
        return ("mae" if "mae" in tag else "supervised"), seen
    return None, seen


def score(raw: RawCheckpoint) -> Score:
    """DECLARED for a timm folder whose architecture belongs to a supported family.

    A folder that declares an unsupported architecture (CLIP, EVA, DINO v1...) is refused here, by name:
    its keys may well look like a supported family's, and the config says they are not.
    """
    cfg = _config(raw)
    arch = cfg.get("architecture")
    if not isinstance(arch, str):
        return Score("supervised", 0)
    family, why = family_of(arch, str((cfg.get("pretrained_cfg") or {}).get("tag") or ""))
    if family is None:
        raise CheckpointFormatError(
            f"{raw.path}: timm {why} is not a supported initialization (supported timm models: "
            "vit_*/deit* (supervised, .mae), vit_*_dinov2, vit_*_dinov3*, eva02_* (not CLIP), beit_*, "
            "beitv2_*, vit_*_clip_*, vit_*_siglip_*)"
        )
    return Score(family, DECLARED, why)


def num_heads_of(cfg: dict) -> tuple[int | None, str]:
    """Head count of a timm folder: ``model_args.num_heads``, else the architecture's default."""
    args = dict(cfg.get("model_args") or {})
    if isinstance(args.get("num_heads"), int):
        return args["num_heads"], "model_args.num_heads in config.json"
    import timm
    import torch

    arch = cfg["architecture"]
    try:
        with torch.device("meta"):  # shapes only: no memory, no weights
            net = timm.create_model(arch, pretrained=False, **args)
        heads = net.blocks[0].attn.num_heads
    except Exception as e:  # unknown to this timm version, or args it rejects
        logger.info("timm cannot build %s (%s); head count left to the size table", arch, e)
        return None, ""
    return heads, f"timm's {arch} default"


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    cfg = _config(raw)
    arch = cfg.get("architecture")
    found, why = family_of(str(arch), str((cfg.get("pretrained_cfg") or {}).get("tag") or ""))
    family = family or found
    if family not in _READERS:
        raise CheckpointFormatError(f"{raw.path}: timm {why} is not a supported initialization")
    heads, heads_from = (num_heads, "--num-heads") if num_heads else num_heads_of(cfg)
    ckpt = _READERS[family].read(raw, model=model, num_heads=heads, family=family)
    heads_note = f"; {heads} heads from {heads_from}" if heads else ""
    ckpt.provenance.notes.append(f"timm folder: {why}{heads_note}")
    return ckpt
