"""The configuration of :class:`~vitinit.modeling.vit.DetectionViT`: plain, meaningful kwargs, validated.

Serialized (``to_json``) into the metadata of converted weights, so a ``--to vitdet`` file says exactly
which backbone it feeds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from vitinit.errors import ConfigError
from vitinit.modeling.attention import ATTENTION_KERNELS, QKV_BIAS
from vitinit.ops.rope import RopeSpec
from vitinit.variants import get_variant

REL_POS_STYLES = ("shared", "per_block", "none")
MLP_KINDS = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")
# Architecture fields added after format_version 1 files were first written, with the value every earlier
# file implies: to_json leaves them out at that value, so earlier files and these read the same.
_PLAIN_VIT = dict(rope=None, mlp="gelu", mlp_norm=False, pre_norm=False, qkv_bias="qkv", patch_bias=True)


def quarter_block_indexes(depth: int, groups: int = 4) -> tuple[int, ...]:
    """The last block of each of ``groups`` equal groups: ViT-B (12) → 2, 5, 8, 11; ViT-L → 5, 11, 17, 23."""
    if depth < groups:
        return tuple(range(depth))
    return tuple((g + 1) * depth // groups - 1 for g in range(groups))


@dataclass(frozen=True)
class ViTBackboneConfig:
    """Plain, meaningful kwargs of :class:`DetectionViT`; serialized into converted weights' metadata."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    mlp_hidden_dim: int = 3072
    in_chans: int = 3
    img_size: int = 1024  # the abs pos embedding is stored at img_size // patch_size
    window_size: int = 14
    global_block_indexes: tuple[int, ...] = (2, 5, 8, 11)
    rel_pos: str = "shared"  # shared | per_block | none
    use_abs_pos: bool = True
    layer_scale: bool = False
    norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    use_act_checkpoint: bool = False  # activation checkpointing, per block
    out_indices: tuple[int, ...] | None = None  # blocks whose outputs are returned; None = the global ones
    attention: str = "auto"  # sdpa | flex | auto (vitinit.modeling.attention); a run-time choice, not weights
    # Beyond the plain ViT (vitinit.canonical.ViTSpec's fields of the same names):
    rope: RopeSpec | None = None  # rotary q/k embedding (DINOv3, EVA-02), on every block
    mlp: str = "gelu"  # gelu | gelu_tanh | quick_gelu | swiglu
    mlp_norm: bool = False  # sub-LayerNorm before fc2 (EVA-02)
    pre_norm: bool = False  # LayerNorm before the blocks (CLIP's ln_pre)
    qkv_bias: str = "qkv"  # qkv | qv (k bias masked) | none
    patch_bias: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rope, dict):
            object.__setattr__(self, "rope", RopeSpec.from_dict(self.rope))
        if self.mlp not in MLP_KINDS:
            raise ConfigError(f"mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        if self.qkv_bias not in QKV_BIAS:
            raise ConfigError(f"qkv_bias must be one of {QKV_BIAS}, got {self.qkv_bias!r}")
        head_dim = self.embed_dim // self.num_heads
        if self.rope is not None and head_dim % 4:
            raise ConfigError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        if self.attention not in ATTENTION_KERNELS:
            raise ConfigError(f"attention must be one of {ATTENTION_KERNELS}, got {self.attention!r}")
        if self.rel_pos not in REL_POS_STYLES:
            raise ConfigError(f"rel_pos must be one of {REL_POS_STYLES}, got {self.rel_pos!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        for i in (*self.global_block_indexes, *(self.out_indices or ())):
            if not 0 <= i < self.depth:
                raise ConfigError(f"block index {i} is outside 0..{self.depth - 1}")
        object.__setattr__(self, "global_block_indexes", tuple(self.global_block_indexes))
        if self.out_indices is not None:
            object.__setattr__(self, "out_indices", tuple(self.out_indices))

    @classmethod
    def for_variant(cls, name: str, **overrides) -> ViTBackboneConfig:
        """The paper's backbone for a named size; ``overrides`` win over the variant."""
        v = get_variant(name)
        base = dict(
            embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads, patch_size=16,
            mlp_hidden_dim=v.mlp_hidden_dim, global_block_indexes=quarter_block_indexes(v.depth),
        )
        base.update(overrides)
        return cls(**base)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size // self.patch_size,) * 2

    @property
    def feature_indices(self) -> tuple[int, ...]:
        return self.out_indices if self.out_indices is not None else self.global_block_indexes

    def replace(self, **changes) -> ViTBackboneConfig:
        return replace(self, **changes)

    def to_json(self) -> str:
        """The architecture, as converted files record it; ``attention`` is how to run it, not what it is."""
        d = asdict(self)
        d.pop("attention")
        d["rope"] = self.rope.to_dict() if self.rope else None
        for k, plain in _PLAIN_VIT.items():
            if d[k] == plain:
                del d[k]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViTBackboneConfig:
        d = json.loads(text)
        d.pop("extra", None)  # a free-form field of files written before it was removed (never read)
        for k in ("global_block_indexes", "out_indices"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)
