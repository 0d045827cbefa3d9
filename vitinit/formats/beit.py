"""BEiT (microsoft/unilm beit/, beit2/) pre-training and fine-tuned checkpoints.

Pre-training (``*_pt22k.pth``): ``{'model': ...}`` with ONE shared relative-position table
``rel_pos_bias.relative_position_bias_table`` ((2·14−1)² + 3 rows, heads), ``gamma_1/gamma_2`` layer
scale, ``attn.q_bias``/``attn.v_bias`` and no key bias, plus ``mask_token`` and ``lm_head`` (dropped) and
persistent ``relative_position_index`` buffers (dropped: recomputed). No absolute position embedding.
Fine-tuned (``*_ft22k``, ``*_ft1k``): per-block tables ``blocks.i.attn.relative_position_bias_table``,
``fc_norm`` and ``head``. BEiT v2 / DeepSpeed files use the ``'module'`` container. mmseg ADE20K files
(``'state_dict'``, ``backbone.`` prefix) are unwrapped, but their UperNet neck keys (``backbone.fpn1..4``)
are not mapped yet and are refused as unknown.
"""

from __future__ import annotations

from vitinit.canonical import Checkpoint
from vitinit.formats._common import (
    build_checkpoint,
    canonical_from_timm,
    is_timm_layout,
    state_dict_of,
    strip_prefix,
)
from vitinit.io.load import RawCheckpoint

FAMILY = "beit"


def _state_dict(raw: RawCheckpoint) -> dict:
    sd = state_dict_of(raw, ("model", "module", "state_dict"))
    if any(k.startswith("backbone.") for k in sd):  # mmseg/mmdet: keep only the backbone
        sd = strip_prefix(sd, "backbone.")
    return sd


def score(raw: RawCheckpoint) -> tuple[str, int]:
    """4 for a timm-layout ViT with BEiT's q/v biases or relative-position tables."""
    if raw.container == "hf-folder":
        return FAMILY, 0
    sd = _state_dict(raw)
    if not is_timm_layout(sd):
        return FAMILY, 0
    beit_keys = ("attn.q_bias", "relative_position_bias_table")
    return FAMILY, 4 if any(k.endswith(beit_keys) for k in sd) else 0


def read(raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None) -> Checkpoint:
    sd = _state_dict(raw)
    shared = "rel_pos_bias.relative_position_bias_table" in sd
    fmt = "beit/pretrain" if shared or "lm_head.weight" in sd else "beit/finetuned"
    tensors, dropped = canonical_from_timm(sd, fmt=fmt)
    notes = ["attn.q_bias/v_bias fused into attn.qkv.bias with a zero key bias (BEiT has none)"]
    return build_checkpoint(
        tensors,
        dropped,
        family=FAMILY,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        notes=notes,
    )
