"""EVA-02 (baaivision/EVA, Fang et al. 2023) MIM-pre-trained ViTs, in the official and timm layouts.

EVA-02 is a pre-norm ViT with patch 14, a learned absolute position embedding (with a cls row), **and** 2-D
RoPE (EVA variant, ``vitinit.ops.rope``: integer positions of the 16x16 pre-training grid — 224 px / 14 —
rescaled to the grid in use, theta 10000, interleaved channel pairs) on the patch tokens, a SwiGLU MLP with a
sub-LayerNorm (``w3(ffn_ln(silu(w1 x) * w2 x))``) and q/v biases without a k bias. No layer scale.

- official (``asuka/modeling_pretrain.py`` / ``modeling_finetune.py``, ``{'model': state_dict}``): separate
  ``attn.q_proj/k_proj/v_proj`` weights with ``attn.q_bias``/``v_bias``, ``mlp.w1/w2/ffn_ln/w3``, the rope
  tables stored once per block and once at the top (``*.rope.freqs_cos/sin``: checked against the EVA rule
  here, then dropped: they are recomputed), ``mask_token`` / ``lm_head`` (pre-training only) or ``fc_norm`` /
  ``head`` (fine-tuned).
- timm (``eva02_*_patch14_*``, bare safetensors or a hub folder): ``q_proj``/``k_proj``/``v_proj`` with q/v
  biases, ``mlp.fc1_g/fc1_x/norm/fc2`` (timm's SwiGLU names: fc1_g = w1, the gated half), ``fc_norm``.

Patch 14 stays 14 unless ``--patch-size 16`` (lossy, recorded). Input normalisation: OpenAI CLIP's mean/std
(EVA-02's MIM teacher is EVA-CLIP; timm's ``pretrained_cfg`` for ``eva02_*``), recorded in the provenance.
EVA-02's own ViTDet gives windowed blocks a 16-token RoPE grid per window; here every block uses coordinates
on the whole detection grid (``vitinit.modeling.rope``).
"""

from __future__ import annotations

import math
import re

import torch

from vitinit.canonical import Checkpoint, LazyTensor, TensorMap
from vitinit.errors import CheckpointFormatError, quote
from vitinit.formats._claims import config_int
from vitinit.formats._common import (
    Score,
    build_checkpoint,
    concat_rows,
    fuse_lazy_qv,
    record_dropped,
    state_dict_of,
)
from vitinit.io.load import RawCheckpoint
from vitinit.ops.rope import RopeSpec, rope_angles, rope_coords

FAMILY = "eva02"
FAMILIES = (FAMILY,)
PRETRAIN_ROPE_GRID = (16, 16)  # pt_seq_len: 224 px / patch 14, every EVA-02 size and fine-tuned resolution
THETA = 10000.0
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

_RENAMES = [  # official and timm leaf names → canonical (q/k/v parts fused afterwards)
    (r"attn\.([qkv])_proj\.(weight|bias)", "attn.{0}.{1}"),
    (r"attn\.([qv])_bias", "attn.{0}.bias"),
    (r"mlp\.(?:w1|fc1_g)\.(weight|bias)", "mlp.fc1_g.{0}"),
    (r"mlp\.(?:w2|fc1_x)\.(weight|bias)", "mlp.fc1_x.{0}"),
    (r"mlp\.(?:ffn_ln|norm)\.(weight|bias)", "mlp.norm.{0}"),
    (r"mlp\.(?:w3|fc2)\.(weight|bias)", "mlp.fc2.{0}"),
    (r"(norm[12]\.(?:weight|bias)|attn\.proj\.(?:weight|bias)|gamma_[12])", "{0}"),
]
_TOP = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"}
_DROPS = {
    r"(^|\.)rope\.freqs_(cos|sin)$": ("*rope.freqs_cos/sin", "recomputed by the EVA rule (checked equal)"),
    r"^cls_token$": ("cls_token", "the detection backbone has no class token"),
    r"^mask_token$": ("mask_token", "only used by masked-image-modeling pre-training"),
    r"^lm_head\.": ("lm_head.*", "MIM head (regresses EVA-CLIP features)"),
    r"^(norm|fc_norm)\.": ("norm.* / fc_norm.*", "final / pooling norm: not backbone"),
    r"^head\.": ("head.*", "classifier head"),
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _layout(sd: dict) -> str | None:
    if "blocks.0.attn.q_proj.weight" not in sd or "pos_embed" not in sd:
        return None
    if "blocks.0.mlp.w1.weight" in sd and "blocks.0.attn.q_bias" in sd:
        return "eva02/official"
    if "blocks.0.mlp.fc1_g.weight" in sd:
        return "eva02/timm"
    return None


def score(raw: RawCheckpoint) -> Score:
    """6 for the official layout (q/k/v projections with q_bias/v_bias, SwiGLU w1/w2/w3); 5 for timm's
    (q/k/v projections, SwiGLU fc1_g/fc1_x, pos_embed). Folders are declared by their config
    (``vitinit.formats.timm_hub``)."""
    if raw.container in ("hf-folder", "timm-folder"):
        return Score(FAMILY, 0)
    fmt = _layout(state_dict_of(raw, ("model", "module", "state_dict")))
    if fmt == "eva02/official":
        return Score(FAMILY, 6, "attn.q_proj with q_bias/v_bias, SwiGLU mlp.w1/w2/w3 (EVA-02's own code)")
    if fmt == "eva02/timm":
        return Score(FAMILY, 5, "attn.q_proj/k_proj/v_proj, SwiGLU mlp.fc1_g/fc1_x, pos_embed (timm eva02_*)")
    return Score(FAMILY, 0)


def _canonical(sd: dict, fmt: str) -> tuple[TensorMap, dict]:
    out, dropped, counts, unknown = {}, {}, {}, []
    for key, t in sd.items():
        m = _BLOCK.match(key)
        target = None
        if m:
            for pattern, name in _RENAMES:
                r = re.fullmatch(pattern, m.group(2))
                if r:
                    target = f"blocks.{m.group(1)}." + name.format(*r.groups())
                    break
        elif key in _TOP:
            target = key
        if target is not None:
            out[target] = t
            continue
        why = next((w for p, w in _DROPS.items() if re.search(p, key)), None)
        if why is None:
            unknown.append(key)
        else:
            record_dropped(dropped, counts, key, *why)
    if unknown:
        raise CheckpointFormatError(f"{fmt}: unexpected key(s) {', '.join(sorted(unknown)[:3])}")
    for i in sorted({int(_BLOCK.match(k).group(1)) for k in out if _BLOCK.match(k)}):
        p = f"blocks.{i}.attn."
        if p + "q.weight" not in out:
            raise CheckpointFormatError(f"{fmt}: block {i} has no q_proj")
        out[p + "qkv.weight"] = concat_rows([out.pop(p + x + ".weight") for x in "qkv"])
        q, k, v = (out.pop(p + x + ".bias", None) for x in "qkv")
        if k is not None:
            raise CheckpointFormatError(f"{fmt}: block {i} has a k bias; EVA-02 has none")
        if q is not None:
            out[p + "qkv.bias"] = fuse_lazy_qv(q, v)
    return out, dropped


def _check_stored_rope(sd: dict, head_dim: int) -> tuple[int, int]:
    """The pre-training grid whose EVA rule gives the official file's stored ``rope.freqs_cos``."""
    cos = sd.get("rope.freqs_cos", sd.get("blocks.0.attn.rope.freqs_cos"))
    if cos is None:
        return PRETRAIN_ROPE_GRID
    stored = cos.load().float()
    side = math.isqrt(stored.shape[0])
    if side * side != stored.shape[0] or stored.shape[-1] != head_dim:
        raise CheckpointFormatError(f"eva02/official: rope.freqs_cos of shape {tuple(stored.shape)} is not a "
                                    f"square grid of {head_dim}-channel rows")
    for pt in (PRETRAIN_ROPE_GRID, (side, side)):
        spec = RopeSpec("eva", THETA, pt)
        ours = rope_angles(spec, rope_coords(spec, (side, side)).flatten(0, 1), head_dim).cos()
        if torch.allclose(ours, stored, atol=1e-5):
            return pt
    raise CheckpointFormatError("eva02/official: the stored rope tables are not EVA's rule (theta 10000)")


def _ref_feat_shape(args: dict, where: str) -> tuple[int, int]:
    """timm's ``ref_feat_shape`` (the RoPE pre-training grid: one side or two), checked."""
    pt = args.get("ref_feat_shape") or PRETRAIN_ROPE_GRID
    pt = [pt] * 2 if isinstance(pt, int) and not isinstance(pt, bool) else pt
    if not (isinstance(pt, list | tuple) and len(pt) in (1, 2)
            and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 1024 for x in pt)):
        raise CheckpointFormatError(
            f"{where}: ref_feat_shape must be one or two integers from 1 to 1024 (the RoPE pre-training "
            f"grid), got {quote(pt)}"
        )
    return (pt[0], pt[-1])


def read(
    raw: RawCheckpoint, *, model: str | None = None, num_heads: int | None = None, family: str | None = None
) -> Checkpoint:
    cfg = raw.config or {}
    sd = state_dict_of(raw, ("model", "module", "state_dict"))
    fmt = _layout(sd) or "eva02/timm"
    tensors, dropped = _canonical(sd, fmt)
    args = cfg.get("model_args") or {}
    pt = _ref_feat_shape(args, f"{raw.path}: config.json model_args")
    heads_hint = config_int(args, "num_heads", what="the head count", bound="heads", where=str(raw.path))
    stored = sd.get("rope.freqs_cos", sd.get("blocks.0.attn.rope.freqs_cos"))
    if stored is not None:
        d = tensors["blocks.0.attn.qkv.weight"].shape[1]
        heads_hint = num_heads or d // stored.shape[-1]  # the tables' rows are head_dim wide
        pt = _check_stored_rope(sd, d // heads_hint)
    input_norm = (*CLIP_NORM, "EVA-02's CLIP mean/std (timm's eva02_* pretrained_cfg, OPENAI_CLIP_MEAN)")
    if not isinstance(tensors.get("pos_embed"), LazyTensor):
        raise CheckpointFormatError(f"{fmt}: no pos_embed")
    return build_checkpoint(
        tensors,
        dropped,
        family=FAMILY,
        fmt=fmt,
        source=str(raw.path),
        model=model,
        num_heads=num_heads,
        heads_hint=heads_hint,
        num_prefix_tokens=1,
        norm_eps=1e-6,
        rope=RopeSpec("eva", THETA, pt),
        qkv_bias="qv" if "blocks.0.attn.qkv.bias" in tensors else None,
        notes=[f"EVA RoPE: positions of the {pt[0]}x{pt[1]} pre-training grid rescaled to the grid in use"],
        input_norm=input_norm,
    )
