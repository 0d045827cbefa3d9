"""The canonical representation every reader produces and every writer consumes.

N readers (``vitinit.formats``) and M writers (``vitinit.targets``) meet here, never in N×M converters.

Canonical tensor names (timm / MAE layout, the one most families already use):

==============================================  =============================================
``patch_embed.proj.weight`` / ``.bias``         (D, C, p, p) / (D)
``pos_embed``                                   (1, P + gh*gw, D); P = ``spec.num_prefix_tokens``
``blocks.{i}.norm1.weight`` / ``.bias``         (D)
``blocks.{i}.attn.qkv.weight`` / ``.bias``      (3D, D) / (3D); BEiT's q/v biases fused with k = 0
``blocks.{i}.attn.proj.weight`` / ``.bias``     (D, D) / (D)
``blocks.{i}.norm2.weight`` / ``.bias``         (D)
``blocks.{i}.mlp.fc1.weight`` / ``.bias``       (F, D) / (F)
``blocks.{i}.mlp.fc2.weight`` / ``.bias``       (D, F) / (D)
``blocks.{i}.gamma_1`` / ``gamma_2``            (D) layer scale, only when ``spec.layer_scale``
``rel_pos_bias.relative_position_bias_table``   ((2w-1)^2 + 3, H) shared table (``spec.rel_pos == "shared"``)
``blocks.{i}.attn.relative_position_bias_table``  same shape, per block (``spec.rel_pos == "per_block"``)
``norm_pre.weight`` / ``.bias``                 (D) CLIP's ``ln_pre`` before the blocks (``spec.pre_norm``)
``blocks.{i}.mlp.fc1_g`` / ``fc1_x`` ``.weight``  (F, D) SwiGLU's gate and value (``spec.mlp == "swiglu"``,
/ ``.bias``                                     instead of ``fc1``): ``fc2(silu(fc1_g x) * fc1_x x)``
``blocks.{i}.mlp.norm.weight`` / ``.bias``      (F) sub-LayerNorm before ``fc2`` (EVA-02), ``spec.mlp_norm``
==============================================  =============================================

The architecture beyond the plain ViT is spelled by :class:`ViTSpec` fields whose defaults are the plain
ViT (so older readers and files are unchanged): the position scheme (``has_abs_pos``, ``rel_pos``,
``rope`` — any combination), the MLP (``mlp``: GELU, tanh-GELU, QuickGELU or SwiGLU; ``mlp_norm``), a
pre-block norm (``pre_norm``), which q/k/v biases exist (``qkv_bias``: ``"qkv"``; ``"qv"``: stored as a
(3D,) ``attn.qkv.bias`` whose k third is ignored, as DINOv3's ``bias_mask`` and EVA's ``q_bias``/``v_bias``;
``"none"``: no ``attn.qkv.bias``) and whether the patch embedding has a bias (``patch_bias``). RoPE has no
tensors: :class:`~vitinit.ops.rope.RopeSpec` says how to recompute it.

Relative-position tables keep BEiT's 3 trailing cls rows so that the canonical form loses nothing; the
normalization step drops them. ``cls_token``, the final ``norm`` and classifier heads are not part of the
canonical backbone: readers drop them and record why in :attr:`Provenance.dropped`.

Tensors are :class:`LazyTensor` so that conversion can stream a multi-GB checkpoint one tensor at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

# LazyTensor lives in vitinit.io (readers produce it); it is re-exported here, part of the canonical form.
from vitinit.io.lazy import LazyTensor
from vitinit.ops.rope import RopeSpec

RelPosStyle = Literal["none", "shared", "per_block"]
BEIT_EXTRA_REL_POS_ROWS = 3  # cls→patch, patch→cls, cls→cls (BEiT's modeling_finetune.py)
MLP_KINDS = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")
QKV_BIAS = ("qkv", "qv", "none")


TensorMap = dict[str, LazyTensor]


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of a source ViT, as far as the backbone is concerned."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    mlp_hidden_dim: int | None = None  # None = 4 * embed_dim
    in_chans: int = 3
    has_abs_pos: bool = True
    pretrain_grid: tuple[int, int] = (14, 14)  # token grid of pos_embed and of the rel-pos window
    num_prefix_tokens: int = 1  # rows before the grid in the stored pos_embed (cls, dist, ...)
    layer_scale: bool = False
    rel_pos: RelPosStyle = "none"
    norm_eps: float = 1e-6
    variant: str | None = None  # "vit-b", ... or None for a custom size
    rope: RopeSpec | None = None  # 2-D rotary embedding on q/k (DINOv3, EVA-02); combinable with the others
    mlp: str = "gelu"  # one of MLP_KINDS
    mlp_norm: bool = False  # a norm between the MLP's activation and fc2 (EVA-02's sub-LN)
    pre_norm: bool = False  # a norm after the position embedding, before the blocks (CLIP's ln_pre)
    qkv_bias: str = "qkv"  # one of QKV_BIAS
    patch_bias: bool = True

    def __post_init__(self) -> None:
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        if self.qkv_bias not in QKV_BIAS:
            raise ValueError(f"qkv_bias must be one of {QKV_BIAS}, got {self.qkv_bias!r}")
        if isinstance(self.rope, dict):
            object.__setattr__(self, "rope", RopeSpec.from_dict(self.rope))

    @property
    def mlp_dim(self) -> int:
        return self.mlp_hidden_dim or 4 * self.embed_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rope"] = self.rope.to_dict() if self.rope else None
        return d


@dataclass
class Provenance:
    """Where the weights came from and what was done to them; travels into every output's metadata."""

    family: str  # beit | mae | mocov3 | supervised | random
    format: str  # e.g. "mae/encoder", "beit/pretrain", "hf/vit"
    source: str  # path or URL as the user gave it
    sha256: str | None = None
    dropped: dict[str, str] = field(default_factory=dict)  # key or pattern -> why
    notes: list[str] = field(default_factory=list)
    normalization: dict = field(default_factory=dict)  # filled by the normalization step
    # The source's input normalisation: {"mean": [r, g, b], "std": [r, g, b] (0..1 scale), "from": where it
    # was read}; empty when unknown. Set by readers with :meth:`set_input_norm`.
    input_norm: dict = field(default_factory=dict)

    def set_input_norm(self, mean, std, origin: str) -> None:
        """Record the mean/std the source was trained with (3 values each, 0..1 scale) and where from."""
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
            raise ValueError(f"input mean/std must be 3 values each (std > 0), got {mean}, {std}")
        self.input_norm = {"mean": mean, "std": std, "from": origin}

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> Provenance:
        return cls(**dict(d))


@dataclass
class Checkpoint:
    """A backbone in canonical form: spec + lazily loaded tensors + provenance."""

    spec: ViTSpec
    tensors: TensorMap
    provenance: Provenance


def block_keys(i: int, *, layer_scale: bool, spec: ViTSpec | None = None) -> list[str]:
    """Canonical names of block ``i``'s tensors (without per-block rel-pos tables) for ``spec``'s
    architecture (``None``: the plain ViT)."""
    swiglu = spec is not None and spec.mlp == "swiglu"
    fc1 = ("mlp.fc1_g", "mlp.fc1_x") if swiglu else ("mlp.fc1",)
    leaves = ["norm1.weight", "norm1.bias", "attn.qkv.weight"]
    if spec is None or spec.qkv_bias != "none":
        leaves.append("attn.qkv.bias")
    leaves += ["attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias"]
    leaves += [f"{m}.{p}" for m in fc1 for p in ("weight", "bias")]
    if spec is not None and spec.mlp_norm:
        leaves += ["mlp.norm.weight", "mlp.norm.bias"]
    leaves += ["mlp.fc2.weight", "mlp.fc2.bias"]
    if layer_scale:
        leaves += ["gamma_1", "gamma_2"]
    return [f"blocks.{i}.{leaf}" for leaf in leaves]


def expected_shapes(spec: ViTSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor's shape for ``spec``: readers validate against it before any work."""
    d, f, p = spec.embed_dim, spec.mlp_dim, spec.patch_size
    gh, gw = spec.pretrain_grid
    shapes: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (d, spec.in_chans, p, p)}
    if spec.patch_bias:
        shapes["patch_embed.proj.bias"] = (d,)
    if spec.pre_norm:
        shapes["norm_pre.weight"] = shapes["norm_pre.bias"] = (d,)
    if spec.has_abs_pos:
        shapes["pos_embed"] = (1, spec.num_prefix_tokens + gh * gw, d)
    table = ((2 * gh - 1) * (2 * gw - 1) + BEIT_EXTRA_REL_POS_ROWS, spec.num_heads)
    if spec.rel_pos == "shared":
        shapes["rel_pos_bias.relative_position_bias_table"] = table
    for i in range(spec.depth):
        for name in block_keys(i, layer_scale=spec.layer_scale, spec=spec):
            leaf = name.split(".", 2)[2]
            shapes[name] = {
                "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d),
                "mlp.fc1.weight": (f, d), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (d, f),
                "mlp.fc1_g.weight": (f, d), "mlp.fc1_g.bias": (f,), "mlp.fc1_x.weight": (f, d),
                "mlp.fc1_x.bias": (f,), "mlp.norm.weight": (f,), "mlp.norm.bias": (f,),
            }.get(leaf, (d,))
        if spec.rel_pos == "per_block":
            shapes[f"blocks.{i}.attn.relative_position_bias_table"] = table
    return shapes


def validate(ckpt: Checkpoint) -> None:
    """Raise :class:`CheckpointFormatError` unless the tensors are exactly the spec's, with right shapes."""
    from vitinit.errors import CheckpointFormatError

    want = expected_shapes(ckpt.spec)
    have = {k: v.shape for k, v in ckpt.tensors.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        raise CheckpointFormatError(
            f"{ckpt.provenance.format}: canonical keys do not match the spec "
            f"(missing {_short(missing)}, unexpected {_short(extra)})"
        )
    for k, shape in want.items():
        if tuple(have[k]) != shape:
            raise CheckpointFormatError(f"tensor {k!r} has shape {tuple(have[k])}, expected {shape}")


def _short(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
