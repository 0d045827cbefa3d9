"""Canonical checkpoint → the paper's detection backbone state (:class:`~vitinit.modeling.vit.DetectionViT`).

What happens to each part (the paper, §3; every choice lands in ``Provenance.normalization``; the modes
are :class:`~vitinit.normalize.options.NormalizeOptions`'s):

- **Absolute position embedding**: the prefix (cls / dist) rows are dropped and the pre-training grid is
  resized to ``img_size / patch`` with plain bicubic, no antialias (``vitinit.ops.pos_embed``, as
  detectron2's ``get_abs_pos``). Sources without one (BEiT) get zeros by default, which adds nothing, so
  the backbone computes what the source did; ``abs_pos="random"`` draws the paper's fresh one instead.
- **Relative position bias**: two BEiT-style tables, one shared by the windowed blocks (window grid) and
  one by the global blocks (full grid) — the paper's layout — or one table per block. A BEiT table, minus
  its 3 cls rows, is resized to each grid (``rel_pos_resize="geometric"``: BEiT's scheme; ``"bicubic"``:
  plain). By default a fine-tuned BEiT's per-block tables stay per block; asking for the shared layout
  averages them, window blocks into the window table and global blocks into the global table (lossy: a
  warning says so and the provenance records it). Sources without tables get zeros (BEiT's own init).
- **Layer scale**: ``keep`` stores ``gamma_1/gamma_2`` (the paper keeps BEiT's); ``fold`` multiplies them
  into ``attn.proj`` and ``mlp.fc2`` (exact up to rounding) so every backbone has one architecture.
- Floating tensors are cast to float32.
"""

from __future__ import annotations

import logging
import warnings

import torch

from vitinit.canonical import BEIT_EXTRA_REL_POS_ROWS, Checkpoint, LazyTensor, Provenance, ViTSpec
from vitinit.errors import CheckpointFormatError, ConfigError
from vitinit.modeling.vit import ViTBackboneConfig, backbone_state_shapes, quarter_block_indexes
from vitinit.normalize.lazy import (
    abs_pos_mode,
    block_tensors,
    fresh_abs_pos,
    layer_scale_record,
    patch_tensors,
    zeros,
)
from vitinit.normalize.options import (
    ABS_POS_MODES,
    LAYER_SCALE_MODES,
    REL_POS_INIT,
    REL_POS_MODES,
    REL_POS_RESIZE,
    Normalized,
    NormalizeOptions,
)
from vitinit.normalize.patch_size import resample_patch_size
from vitinit.ops.pos_embed import resize_abs_pos_embed
from vitinit.ops.rel_pos import resize_rel_pos_table

logger = logging.getLogger(__name__)


def rel_pos_layout(spec: ViTSpec, rel_pos: str) -> str:
    """``rel_pos`` with ``auto`` resolved: per-block tables stay per block, anything else is shared."""
    if rel_pos == "auto":
        return "per_block" if spec.rel_pos == "per_block" else "shared"
    return rel_pos


def detection_config(
    spec: ViTSpec,
    *,
    img_size: int = 1024,
    window_size: int = 14,
    global_block_indexes: tuple[int, ...] | None = None,
    rel_pos: str = "auto",
    layer_scale: str = "keep",
    abs_pos: str = "auto",
    patch_size: int | None = None,
    **extra,
) -> ViTBackboneConfig:
    """The paper's backbone for a source architecture (``extra`` goes to :class:`ViTBackboneConfig`).

    ``patch_size`` other than the source's: :func:`to_vitdet` resamples the kernel (``normalize.patch_size``).
    """
    for value, allowed, name in (
        (layer_scale, LAYER_SCALE_MODES, "layer_scale"),
        (rel_pos, REL_POS_MODES, "rel_pos"),
        (abs_pos, ABS_POS_MODES, "abs_pos"),
    ):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
    return ViTBackboneConfig(
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        patch_size=patch_size or spec.patch_size,
        mlp_hidden_dim=spec.mlp_dim,
        in_chans=spec.in_chans,
        img_size=img_size,
        window_size=window_size,
        global_block_indexes=tuple(global_block_indexes)
        if global_block_indexes is not None
        else quarter_block_indexes(spec.depth),
        rel_pos=rel_pos_layout(spec, rel_pos),
        use_abs_pos=abs_pos != "none",
        layer_scale=spec.layer_scale and layer_scale == "keep",
        norm_eps=spec.norm_eps,
        rope=spec.rope,
        mlp=spec.mlp,
        mlp_norm=spec.mlp_norm,
        pre_norm=spec.pre_norm,
        qkv_bias=spec.qkv_bias,
        patch_bias=spec.patch_bias,
        **extra,
    )


def normalize(ckpt: Checkpoint, options: NormalizeOptions) -> Normalized:
    """The vitdet target's tensors for ``ckpt`` under ``options`` (lazy), with its backbone config."""
    config = detection_config(
        ckpt.spec,
        img_size=options.img_size,
        window_size=options.window_size,
        global_block_indexes=options.global_blocks_for(ckpt.spec.depth),
        rel_pos=options.rel_pos,
        layer_scale=options.layer_scale,
        abs_pos=options.abs_pos,
    )
    tensors, prov = to_vitdet(
        ckpt,
        config,
        layer_scale=options.layer_scale,
        rel_pos_resize=options.rel_pos_resize,
        abs_pos=options.abs_pos,
        rel_pos_init=options.rel_pos_init,
        seed=options.seed,
    )
    return Normalized("vitdet", ckpt.spec, tensors, prov, config=config, options=options)


def _abs_pos(ckpt: Checkpoint, config: ViTBackboneConfig, mode: str, seed: int, record: dict) -> LazyTensor:
    spec, grid = ckpt.spec, config.grid
    shape = (1, *grid, config.embed_dim)
    if mode != "source":
        why = "source has none" if not spec.has_abs_pos else "the source's embedding replaced"
        tensor, record["abs_pos"] = fresh_abs_pos(mode, shape, seed, grid, why)
        return tensor
    old = tuple(spec.pretrain_grid)
    record["abs_pos"] = f"pre-trained, {spec.num_prefix_tokens} prefix row(s) dropped, " + (
        f"resized {old[0]}x{old[1]} -> {grid[0]}x{grid[1]} bicubic (no antialias)"
        if old != grid
        else f"kept at {grid[0]}x{grid[1]}"
    )
    src = ckpt.tensors["pos_embed"]
    return LazyTensor(
        shape,
        torch.float32,
        lambda: resize_abs_pos_embed(src.load().float(), old, grid, num_prefix_tokens=spec.num_prefix_tokens),
    )


def _table(sources: list[LazyTensor], grid: tuple[int, int], method: str) -> LazyTensor:
    """Mean of ``sources`` (BEiT tables with cls rows) resized to ``grid``, without cls rows.

    Averaging before resizing is the same as after: both resize methods are linear in the table.
    """
    heads = sources[0].shape[1]
    rows = (2 * grid[0] - 1) * (2 * grid[1] - 1)

    def make() -> torch.Tensor:
        table = torch.stack([s.load().float() for s in sources]).mean(0)
        with warnings.catch_warnings():  # timm's interpolator warns about its own indexing style
            warnings.simplefilter("ignore", UserWarning)
            return resize_rel_pos_table(table, grid, num_extra_rows=BEIT_EXTRA_REL_POS_ROWS, method=method)

    return LazyTensor((rows, heads), torch.float32, make)


def _rel_pos(
    ckpt: Checkpoint, config: ViTBackboneConfig, method: str, init: str, record: dict
) -> dict[str, LazyTensor]:
    spec, t = ckpt.spec, ckpt.tensors
    if config.rel_pos == "none":
        record["rel_pos"] = "none (no relative position bias)"
        return {}
    win, full = (config.window_size,) * 2, config.grid
    is_global = [i in config.global_block_indexes for i in range(config.depth)]
    shared = t.get("rel_pos_bias.relative_position_bias_table")
    per_block = [t.get(f"blocks.{i}.attn.relative_position_bias_table") for i in range(config.depth)]
    carried = spec.rel_pos != "none" and init == "source"

    def make(blocks: list[int], grid: tuple[int, int]) -> LazyTensor:
        if not carried:
            return zeros(((2 * grid[0] - 1) * (2 * grid[1] - 1), config.num_heads))
        return _table([shared] if spec.rel_pos == "shared" else [per_block[i] for i in blocks], grid, method)

    out: dict[str, LazyTensor] = {}
    if config.rel_pos == "shared":
        windowed = [i for i, g in enumerate(is_global) if not g]
        globals_ = [i for i, g in enumerate(is_global) if g]
        out["rel_pos_window.relative_position_bias_table"] = make(windowed or globals_, win)
        out["rel_pos_global.relative_position_bias_table"] = make(globals_ or windowed, full)
        if carried and spec.rel_pos == "per_block":
            msg = (
                "per-block relative position tables AVERAGED (lossy): window blocks' mean → window table, "
                "global blocks' mean → global table (rel_pos='per_block' keeps them)"
            )
            logger.warning(msg)
            record["rel_pos_rule"] = msg
    else:
        for i, g in enumerate(is_global):
            out[f"blocks.{i}.rel_pos.relative_position_bias_table"] = make([i], full if g else win)
    source = {
        "none": "zeros (source has none)",
        "shared": "source's shared table without its 3 cls rows",
        "per_block": "source's per-block tables without their 3 cls rows",
    }[spec.rel_pos]
    if spec.rel_pos != "none" and not carried:
        source = "zeros (rel_pos_init=zero; the source's tables are not used)"
    resized = f", resized ({method})" if carried else ""
    record["rel_pos"] = f"{config.rel_pos} tables from {source}{resized}"
    return out


def to_vitdet(
    ckpt: Checkpoint,
    config: ViTBackboneConfig,
    *,
    layer_scale: str = "keep",
    rel_pos_resize: str = "geometric",
    abs_pos: str = "auto",
    rel_pos_init: str = "source",
    seed: int = 0,
) -> tuple[dict[str, LazyTensor], Provenance]:
    """Tensors named exactly as ``DetectionViT(config).state_dict()``, and the provenance with
    ``normalization`` filled. Nothing is computed until a tensor is loaded.

    ``config`` (from :func:`detection_config`) fixes the layout; the keywords are the value policies of
    :class:`~vitinit.normalize.options.NormalizeOptions`.
    """
    for value, allowed, name in (
        (layer_scale, LAYER_SCALE_MODES, "layer_scale"),
        (rel_pos_resize, REL_POS_RESIZE, "rel_pos_resize"),
        (abs_pos, ABS_POS_MODES, "abs_pos"),
        (rel_pos_init, REL_POS_INIT, "rel_pos_init"),
    ):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
    if config.patch_size != ckpt.spec.patch_size:  # explicit option (e.g. DINOv2 14 -> 16): lossy, noted
        ckpt = resample_patch_size(ckpt, config.patch_size)
    spec = ckpt.spec
    keep_gamma = spec.layer_scale and layer_scale == "keep"
    if config.layer_scale != keep_gamma or config.use_abs_pos != (abs_pos != "none"):
        raise ConfigError(
            f"config (layer_scale={config.layer_scale}, use_abs_pos={config.use_abs_pos}) does not match "
            f"layer_scale={layer_scale!r}, abs_pos={abs_pos!r} for this source; use detection_config"
        )
    record: dict = {
        "target": "vitdet",
        "img_size": config.img_size,
        "grid": list(config.grid),
        "window_size": config.window_size,
        "global_block_indexes": list(config.global_block_indexes),
        "dtype": "float32",
        "seed": seed,
        "rel_pos_resize": rel_pos_resize,
    }
    out = patch_tensors(ckpt)
    if config.use_abs_pos:
        out["pos_embed"] = _abs_pos(ckpt, config, abs_pos_mode(ckpt, abs_pos), seed, record)
    else:
        record["abs_pos"] = "none (no absolute position embedding)"
    out.update(_rel_pos(ckpt, config, rel_pos_resize, rel_pos_init, record))
    out.update(block_tensors(ckpt, keep_gamma=keep_gamma))
    record["layer_scale"] = layer_scale_record(ckpt, keep_gamma)
    if spec.rope is not None:
        record["rope"] = rope_record(spec.rope, config)
    _check_against_model(out, config)
    prov = Provenance.from_dict(ckpt.provenance.to_dict())
    prov.normalization = record
    return out, prov


def rope_record(rope, config: ViTBackboneConfig) -> str:
    """What the converted backbone's RoPE computes at its detection grid (``vitinit.ops.rope``)."""
    gh, gw = config.grid
    if rope.variant == "dinov3":
        rule = f"DINOv3 RoPE (base {rope.base:g}, periods {rope.periods_dtype}): cell centres 2(i+0.5)/n-1"
    else:
        ph, pw = rope.pretrain_grid
        rule = f"EVA RoPE (theta {rope.base:g}): positions i*{ph}/n of the {ph}x{pw} pre-training grid"
    return f"{rule} on the {gh}x{gw} grid, windowed blocks included (padding continues the rule)"


def _check_against_model(tensors: dict[str, LazyTensor], config: ViTBackboneConfig) -> None:
    want = backbone_state_shapes(config)
    bad = sorted(
        k
        for k in set(want) | set(tensors)
        if tuple(want.get(k, ())) != tuple(tensors[k].shape if k in tensors else ())
    )
    if bad:
        raise CheckpointFormatError(
            f"normalized weights do not match the backbone at {', '.join(bad[:3])}"
            + (f" (+{len(bad) - 3})" if len(bad) > 3 else "")
        )
