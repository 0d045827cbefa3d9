"""The paper's ViT backbone for Mask R-CNN.

Li et al., *Benchmarking Detection Transfer Learning with Vision Transformers* (arXiv 2111.11429), §3:
a plain ViT at detection resolution whose blocks use non-overlapping windowed attention except 4 global
blocks (the last block of each quarter of the depth), with an absolute position embedding at the detection
grid *and* BEiT-style relative position biases — one table shared by all windowed blocks and one shared by
all global blocks. Layer scale is optional (BEiT keeps it).

Windows follow detectron2's ViTDet: the grid is zero-padded (after ``norm1``) to a multiple of the window and
cropped back, and padded tokens are not masked.

The same backbone expresses today's pre-trained ViTs (``ViTBackboneConfig``): RoPE on q/k in the DINOv3 or
EVA variant (``vitinit.modeling.rope``; every block, combinable with the absolute embedding and the tables),
the MLP (GELU, tanh-GELU, QuickGELU, SwiGLU, optionally with EVA-02's sub-LN), a norm before the blocks
(CLIP's ``ln_pre``), the q/k/v bias pattern and a bias-free patch embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint

from vitinit.modeling.attention import (
    Attention,
    RelativePositionBias,
    RelPosTable,
    resolve_kernel,
    window_partition,
    window_unpartition,
)
from vitinit.modeling.layers import DropPath, build_mlp
from vitinit.modeling.rope import RotaryTables, rotary_tables
from vitinit.modeling.vit_config import (  # noqa: F401  (re-exported: the backbone's config lives beside it)
    REL_POS_STYLES,
    ViTBackboneConfig,
    quarter_block_indexes,
)
from vitinit.ops.pos_embed import resize_abs_pos_embed


def init_pos_embed_(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ViTDet's ``trunc_normal_(pos_embed, std=0.02)``; also what conversion draws for ``abs_pos=random``."""
    return nn.init.trunc_normal_(t, std=0.02, generator=generator)


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size == 0`` means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        *,
        window_size: int = 0,
        layer_scale: bool = False,
        rel_pos_grid: tuple[int, int] | None = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        mlp: str = "gelu",
        mlp_norm: bool = False,
        qkv_bias: str = "qkv",
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = build_mlp(dim, mlp_hidden_dim, mlp, mlp_norm, norm_eps)
        # Layer scale as BEiT names it; values come from the checkpoint (1.0 is identity for fresh models).
        self.gamma_1 = nn.Parameter(torch.ones(dim)) if layer_scale else None
        self.gamma_2 = nn.Parameter(torch.ones(dim)) if layer_scale else None
        # Per-block table (option); the shared tables live on the backbone.
        self.rel_pos = RelativePositionBias(rel_pos_grid, num_heads) if rel_pos_grid else None

    def forward(
        self,
        x: torch.Tensor,
        shared_bias: torch.Tensor | RelPosTable | None,
        flex: bool = False,
        rope: RotaryTables | None = None,
    ) -> torch.Tensor:
        """``shared_bias``: the backbone's dense bias (sdpa) or table (``flex``) for this block's kind;
        ``rope``: the backbone's rotary tables for this block's kind (windowed or global)."""
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.window_size:
            y, padded = window_partition(y, self.window_size)
            grid = (self.window_size, self.window_size)
        else:
            y, grid = y.reshape(b, h * w, c), (h, w)
        bias = shared_bias
        if self.rel_pos is not None:
            bias = self.rel_pos.table_for(grid) if flex else self.rel_pos(grid)
        y = self.attn(y, bias, rope)
        if self.window_size:
            y = window_unpartition(y, self.window_size, padded, (h, w))
        else:
            y = y.view(b, h, w, c)
        if self.gamma_1 is not None:
            y = self.gamma_1 * y
        x = x + self.drop_path(y)
        y = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            y = self.gamma_2 * y
        return x + self.drop_path(y)


class DetectionViT(nn.Module):
    """Plain ViT returning (B, D, H/p, W/p) maps of the ``config.feature_indices`` blocks."""

    def __init__(self, config: ViTBackboneConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(
            cfg.in_chans, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, *cfg.grid, d)) if cfg.use_abs_pos else None
        self.norm_pre = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.pre_norm else None
        window_grid = (cfg.window_size, cfg.window_size)
        if cfg.rel_pos == "shared":
            self.rel_pos_window = RelativePositionBias(window_grid, cfg.num_heads)
            self.rel_pos_global = RelativePositionBias(cfg.grid, cfg.num_heads)
        # Drop path grows linearly over depth, as in ViTDet.
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        blocks = []
        for i in range(cfg.depth):
            is_global = i in cfg.global_block_indexes
            blocks.append(
                Block(
                    d, cfg.num_heads, cfg.mlp_hidden_dim,
                    window_size=0 if is_global else cfg.window_size,
                    layer_scale=cfg.layer_scale,
                    rel_pos_grid=(
                        (cfg.grid if is_global else window_grid) if cfg.rel_pos == "per_block" else None
                    ),
                    drop_path=dpr[i],
                    norm_eps=cfg.norm_eps,
                    mlp=cfg.mlp,
                    mlp_norm=cfg.mlp_norm,
                    qkv_bias=cfg.qkv_bias,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        return self.config.embed_dim

    def reset_parameters(self) -> None:
        """The paper's random initialization (as ViTDet / timm ViT):

        - Linear weights: truncated normal, std 0.02; biases 0.
        - LayerNorm: weight 1, bias 0.
        - Patch embedding: PyTorch's Conv2d default (Kaiming-uniform, a=√5), as ViTDet leaves it.
        - Absolute position embedding: truncated normal, std 0.02 (ViTDet's ``trunc_normal_(pos_embed)``).
        - Relative position tables: zeros (BEiT's init). Layer scale: ones (identity).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.patch_embed.proj.reset_parameters()
        if self.pos_embed is not None:
            init_pos_embed_(self.pos_embed)

    def abs_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """The absolute embedding at ``grid``, resized at run time when the input grid differs."""
        g = self.config.grid
        return resize_abs_pos_embed(self.pos_embed.flatten(1, 2), g, tuple(grid))

    def rotary(self, grid: tuple[int, int], device: torch.device) -> tuple:
        """(windowed, global) rotary tables for a token grid, each None where no such block exists."""
        cfg = self.config
        if cfg.rope is None:
            return None, None
        head_dim, ws = cfg.embed_dim // cfg.num_heads, cfg.window_size
        windowed = any(blk.window_size for blk in self.blocks)
        global_ = any(not blk.window_size for blk in self.blocks)
        return (
            rotary_tables(cfg.rope, head_dim, grid, window=ws, device=device) if windowed else None,
            rotary_tables(cfg.rope, head_dim, grid, device=device) if global_ else None,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # (B, h, w, D)
        grid = (x.shape[1], x.shape[2])
        if self.pos_embed is not None:
            x = x + self.abs_pos(grid)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        flex = resolve_kernel(self.config.attention, x.device, needs_grad=needs_grad) == "flex"
        window_bias = global_bias = None
        if self.config.rel_pos == "shared":
            # Gathered once per forward and shared by every block of its kind; skipped when no block of that
            # kind exists (the global bias alone is heads × 4096² floats at 1024 px). flex reads the tables
            # themselves, so no N×N bias is made.
            ws = self.config.window_size
            if any(blk.window_size for blk in self.blocks):
                window_bias = (self.rel_pos_window.table_for if flex else self.rel_pos_window)((ws, ws))
            if any(not blk.window_size for blk in self.blocks):
                global_bias = (self.rel_pos_global.table_for if flex else self.rel_pos_global)(grid)
            if torch.is_autocast_enabled(x.device.type):
                # Cast once here, not in each block: every cast copy of the global bias (~400 MB for ViT-B
                # at 1024 px in bf16) would otherwise be kept for the backward pass of each global block.
                dtype = torch.get_autocast_dtype(x.device.type)
                window_bias = window_bias.to(dtype) if window_bias is not None else None
                global_bias = global_bias.to(dtype) if global_bias is not None else None
        window_rope, global_rope = self.rotary(grid, x.device)
        outs = []
        wanted = set(self.config.feature_indices)
        for i, blk in enumerate(self.blocks):
            bias = window_bias if blk.window_size else global_bias
            rope = window_rope if blk.window_size else global_rope
            if self.config.use_act_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, bias, flex, rope, use_reentrant=False)
            else:
                x = blk(x, bias, flex, rope)
            if i in wanted:
                outs.append(x.permute(0, 3, 1, 2))
        return outs


def build_backbone(config: ViTBackboneConfig, *, device: torch.device | str | None = None) -> DetectionViT:
    """Build :class:`DetectionViT`; ``device="meta"`` gives the key/shape manifest without memory."""
    if device is None:
        return DetectionViT(config)
    with torch.device(device):
        return DetectionViT(config)


def backbone_state_shapes(config: ViTBackboneConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the backbone's persistent state: what ``--to vitdet`` files must hold exactly."""
    return {k: tuple(v.shape) for k, v in build_backbone(config, device="meta").state_dict().items()}


def load_backbone_state(model: DetectionViT, state: dict[str, torch.Tensor]) -> None:
    """Strict load with a one-line error naming the mismatch (never a silent partial load)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    bad = sorted(k for k in set(want) & set(state) if tuple(state[k].shape) != want[k])
    if missing or extra or bad:
        from vitinit.errors import CheckpointFormatError

        def short(keys: Sequence[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3})" if len(keys) > 3 else "") if keys else "none"

        raise CheckpointFormatError(
            f"backbone weights do not match the model: missing {short(missing)}; unexpected {short(extra)}; "
            f"wrong shape {short(bad)}"
        )
    model.load_state_dict(state, strict=True)
