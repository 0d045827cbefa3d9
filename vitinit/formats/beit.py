"""BEiT and BEiT v2 (microsoft/unilm beit/, beit2/) pre-training and fine-tuned checkpoints.

Pre-training (``*_pt22k.pth``): ``{'model': ...}`` with ONE shared relative-position table
``rel_pos_bias.relative_position_bias_table`` ((2·14−1)² + 3 rows, heads), ``gamma_1/gamma_2`` layer
scale, ``attn.q_bias``/``attn.v_bias`` and no key bias, plus ``mask_token`` and ``lm_head`` (dropped) and
persistent ``relative_position_index`` buffers (dropped: recomputed). No absolute position embedding.
Fine-tuned (``*_ft22k``, ``*_ft1k``): per-block tables ``blocks.i.attn.relative_position_bias_table``,
``fc_norm`` and ``head``. BEiT v2 / DeepSpeed files use the ``'module'`` container. mmseg ADE20K files
(``'state_dict'``, ``backbone.`` prefix) are unwrapped, but their UperNet neck keys (``backbone.fpn1..4``)
are not mapped yet and are refused as unknown.

BEiT v2 uses the same container and keys (beit2/modeling_pretrain.py); its pre-training files add
``cls_pt_layers.*`` (the 2 extra blocks of its patch-aggregation head, dropped), which is how a v2
pre-training file is told apart. A fine-tuned v2 file is key-for-key a v1 file: only ``--from beitv2`` (or a
config naming it) says which it is, and auto-detection reports it as ``beit``.
"""

from __future__ import annotations

from vitinit.canonical import Checkpoint
from vitinit.formats._common import (
    DECLARED,
    Score,
    build_checkpoint,
    canonical_from_timm,
    is_timm_layout,
    state_dict_of,
    strip_prefix,
)
from vitinit.io.load import RawCheckpoint

FAMILY = "beit"
FAMILIES = (FAMILY, "beitv2")
SHARED_LAYOUT = FAMILIES  # a fine-tuned v2 file is key-for-key a v1 one: --from may pick either


def _state_dict(raw: RawCheckpoint) -> dict:
    sd = state_dict_of(raw, ("model", "module", "state_dict"))
    if any(k.startswith("backbone.") for k in sd):  # mmseg/mmdet: keep only the backbone
        sd = strip_prefix(sd, "backbone.")
    return sd


def _declared_model(raw: RawCheckpoint) -> str | None:
    """BEiT's training checkpoints keep ``args.model``: ``beit_*`` (v1), ``beit_*_cls_pt`` (v2, beit2's
    modeling_pretrain.py names)."""
    model = getattr(raw.tree.get("args"), "model", None)
    return model if isinstance(model, str) and model.startswith("beit") else None


def score(raw: RawCheckpoint) -> Score:
    """4 for a timm-layout ViT with BEiT's q/v biases or relative-position tables; 5 (BEiT v2) when the
    v2 pre-training head's ``cls_pt_layers`` are there too; DECLARED for ``args.model``."""
    if raw.container == "hf-folder":
        return Score(FAMILY, 0)
    sd = _state_dict(raw)
    if not is_timm_layout(sd):
        return Score(FAMILY, 0)
    declared = _declared_model(raw)
    if declared:
        family = "beitv2" if "cls_pt" in declared or declared.startswith("beitv2") else FAMILY
        return Score(family, DECLARED, f"args.model = {declared!r} in the checkpoint")
    leaves = ("q_bias", "relative_position_bias_table")
    found = sorted({leaf for k in sd for leaf in leaves if k.endswith(leaf)})
    if not found:
        return Score(FAMILY, 0)
    why = f"BEiT's {' and '.join(found)} keys"
    if any(k.startswith("cls_pt_layers.") for k in sd):
        return Score("beitv2", 5, why + " with BEiT v2's cls_pt_layers")
    return Score(FAMILY, 4, why)


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    """``family``: "beit" or "beitv2" (the same layout); None = what :func:`score` sees."""
    sd = _state_dict(raw)
    family = family or score(raw).family
    shared = "rel_pos_bias.relative_position_bias_table" in sd
    fmt = f"{family}/{'pretrain' if shared or 'lm_head.weight' in sd else 'finetuned'}"
    tensors, dropped = canonical_from_timm(sd, fmt=fmt)
    notes = ["attn.q_bias/v_bias fused into attn.qkv.bias with a zero key bias (BEiT has none)"]
    return build_checkpoint(
        tensors,
        dropped,
        family=family,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        notes=notes,
    )
