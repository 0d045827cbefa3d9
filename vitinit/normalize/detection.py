"""Canonical checkpoint → the paper's detection backbone state (:class:`~vitinit.modeling.vit.DetectionViT`).

What happens to each part (the paper, §3; every choice lands in ``Provenance.normalization``):

- **Absolute position embedding**: the prefix (cls / dist) rows are dropped and the pre-training grid is
  resized to ``img_size / patch`` with plain bicubic, no antialias (``vitinit.ops.pos_embed``, as
  detectron2's ``get_abs_pos``). Sources without one (BEiT, random) get a fresh truncated normal, std 0.02,
  from a seeded generator.
- **Relative position bias** (``rel_pos="shared"``, the paper): two BEiT-style tables, one shared by the
  windowed blocks (window grid) and one by the global blocks (full grid). A BEiT pre-training table, minus
  its 3 cls rows, is resized into both (``resize="geometric"``: BEiT's scheme; ``"bicubic"``: plain). A
  fine-tuned BEiT's per-block tables are averaged, window blocks into the window table and global blocks
  into the global table (a warning says so); ``rel_pos="per_block"`` keeps one table per block instead.
  Sources without tables get zeros (BEiT's own init).
- **Layer scale**: ``keep`` stores ``gamma_1/gamma_2`` (the paper keeps BEiT's); ``fold`` multiplies them
  into ``attn.proj`` and ``mlp.fc2`` (exact up to rounding) so every backbone has one architecture.
- Floating tensors are cast to float32.
"""

from __future__ import annotations

import logging
import warnings

import torch

from vitinit.canonical import BEIT_EXTRA_REL_POS_ROWS, Checkpoint, LazyTensor, Provenance, ViTSpec, block_keys
from vitinit.errors import CheckpointFormatError, ConfigError
from vitinit.modeling.vit import ViTBackboneConfig, backbone_state_shapes, quarter_block_indexes
from vitinit.normalize.patch_size import resample_patch_size
from vitinit.ops.layer_scale import fold_layer_scale
from vitinit.ops.pos_embed import resize_abs_pos_embed
from vitinit.ops.rel_pos import resize_rel_pos_table

logger = logging.getLogger(__name__)

LAYER_SCALE_MODES = ("keep", "fold")
REL_POS_MODES = ("shared", "per_block")
REL_POS_RESIZE = ("geometric", "bicubic")


def detection_config(
    spec: ViTSpec,
    *,
    img_size: int = 1024,
    window_size: int = 14,
    global_block_indexes: tuple[int, ...] | None = None,
    rel_pos: str = "shared",
    layer_scale: str = "keep",
    patch_size: int | None = None,
    **extra,
) -> ViTBackboneConfig:
    """The paper's backbone for a source architecture (``extra`` goes to :class:`ViTBackboneConfig`).

    ``patch_size`` other than the source's: :func:`to_vitdet` resamples the kernel (``normalize.patch_size``).
    """
    if layer_scale not in LAYER_SCALE_MODES:
        raise ConfigError(f"layer_scale must be one of {LAYER_SCALE_MODES}, got {layer_scale!r}")
    if rel_pos not in REL_POS_MODES:
        raise ConfigError(f"rel_pos must be one of {REL_POS_MODES}, got {rel_pos!r}")
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
        rel_pos=rel_pos,
        use_abs_pos=True,
        layer_scale=spec.layer_scale and layer_scale == "keep",
        norm_eps=spec.norm_eps,
        **extra,
    )


def as_float32(t: LazyTensor) -> LazyTensor:
    return (
        t
        if t.dtype == torch.float32 or not t.dtype.is_floating_point
        else t.map(lambda x: x.float(), dtype=torch.float32)
    )


def fresh_pos_embed(shape: tuple[int, ...], seed: int) -> LazyTensor:
    def make() -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        t = torch.empty(shape)
        # ViTDet's/timm's N(0, 0.02²) truncated at ±2 (absolute); torch's version takes a generator.
        torch.nn.init.trunc_normal_(t, std=0.02, generator=g)
        return t

    return LazyTensor(shape, torch.float32, make)


def _abs_pos(ckpt: Checkpoint, config: ViTBackboneConfig, seed: int, record: dict) -> LazyTensor:
    spec, grid = ckpt.spec, config.grid
    shape = (1, *grid, config.embed_dim)
    if not spec.has_abs_pos:
        record["abs_pos"] = (
            f"fresh truncated normal std 0.02 at {grid[0]}x{grid[1]} (seed {seed}); source has none"
        )
        return fresh_pos_embed(shape, seed)
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


def _zeros(shape: tuple[int, ...]) -> LazyTensor:
    return LazyTensor(shape, torch.float32, lambda: torch.zeros(shape))


def _rel_pos(ckpt: Checkpoint, config: ViTBackboneConfig, method: str, record: dict) -> dict[str, LazyTensor]:
    spec, t = ckpt.spec, ckpt.tensors
    win, full = (config.window_size,) * 2, config.grid
    heads = config.num_heads
    is_global = [i in config.global_block_indexes for i in range(config.depth)]
    grids = [full if g else win for g in is_global]
    shared = t.get("rel_pos_bias.relative_position_bias_table")
    per_block = [t.get(f"blocks.{i}.attn.relative_position_bias_table") for i in range(config.depth)]

    def source_for(blocks: list[int]) -> list[LazyTensor]:
        return [shared] if spec.rel_pos == "shared" else [per_block[i] for i in blocks]

    def make(blocks: list[int], grid: tuple[int, int]) -> LazyTensor:
        if spec.rel_pos == "none":
            return _zeros(((2 * grid[0] - 1) * (2 * grid[1] - 1), heads))
        return _table(source_for(blocks), grid, method)

    out: dict[str, LazyTensor] = {}
    if config.rel_pos == "shared":
        windowed = [i for i, g in enumerate(is_global) if not g]
        globals_ = [i for i, g in enumerate(is_global) if g]
        out["rel_pos_window.relative_position_bias_table"] = make(windowed or globals_, win)
        out["rel_pos_global.relative_position_bias_table"] = make(globals_ or windowed, full)
        if spec.rel_pos == "per_block":
            msg = (
                "per-block relative position tables averaged: window blocks' mean → window table, global "
                "blocks' mean → global table (use rel_pos='per_block' to keep them)"
            )
            logger.warning(msg)
            record["rel_pos_rule"] = msg
    elif config.rel_pos == "per_block":
        for i, grid in enumerate(grids):
            out[f"blocks.{i}.rel_pos.relative_position_bias_table"] = make([i], grid)
    source = {
        "none": "zeros (source has none)",
        "shared": "source's shared table without its 3 cls rows",
        "per_block": "source's per-block tables without their 3 cls rows",
    }[spec.rel_pos]
    record["rel_pos"] = f"{config.rel_pos} tables from {source}" + (
        f", resized ({method})" if spec.rel_pos != "none" else ""
    )
    return out


def to_vitdet(
    ckpt: Checkpoint,
    config: ViTBackboneConfig,
    *,
    layer_scale: str = "keep",
    rel_pos_resize: str = "geometric",
    seed: int = 0,
) -> tuple[dict[str, LazyTensor], Provenance]:
    """Tensors named exactly as ``DetectionViT(config).state_dict()``, and the provenance with
    ``normalization`` filled. Nothing is computed until a tensor is loaded."""
    if layer_scale not in LAYER_SCALE_MODES:
        raise ConfigError(f"layer_scale must be one of {LAYER_SCALE_MODES}, got {layer_scale!r}")
    if rel_pos_resize not in REL_POS_RESIZE:
        raise ConfigError(f"rel_pos_resize must be one of {REL_POS_RESIZE}, got {rel_pos_resize!r}")
    if config.patch_size != ckpt.spec.patch_size:  # explicit option (e.g. DINOv2 14 -> 16): lossy, noted
        ckpt = resample_patch_size(ckpt, config.patch_size)
    spec, t = ckpt.spec, ckpt.tensors
    keep_gamma = spec.layer_scale and layer_scale == "keep"
    if config.layer_scale != keep_gamma:
        raise ConfigError(
            f"config.layer_scale={config.layer_scale} but layer_scale={layer_scale!r} with a source that "
            f"{'has' if spec.layer_scale else 'has no'} layer scale; build the config with detection_config"
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
    out: dict[str, LazyTensor] = {
        "patch_embed.proj.weight": as_float32(t["patch_embed.proj.weight"]),
        "patch_embed.proj.bias": as_float32(t["patch_embed.proj.bias"]),
        "pos_embed": _abs_pos(ckpt, config, seed, record),
    }
    out.update(_rel_pos(ckpt, config, rel_pos_resize, record))
    for i in range(spec.depth):
        for name in block_keys(i, layer_scale=False):
            out[name] = as_float32(t[name])
        if keep_gamma:
            out[f"blocks.{i}.gamma_1"] = as_float32(t[f"blocks.{i}.gamma_1"])
            out[f"blocks.{i}.gamma_2"] = as_float32(t[f"blocks.{i}.gamma_2"])
        elif spec.layer_scale:
            for gamma, layer in (("gamma_1", "attn.proj"), ("gamma_2", "mlp.fc2")):
                w, b = fold_lazy(
                    t[f"blocks.{i}.{layer}.weight"], t[f"blocks.{i}.{layer}.bias"], t[f"blocks.{i}.{gamma}"]
                )
                out[f"blocks.{i}.{layer}.weight"], out[f"blocks.{i}.{layer}.bias"] = w, b
    record["layer_scale"] = (
        "kept (gamma_1/gamma_2)"
        if keep_gamma
        else "folded into attn.proj and mlp.fc2"
        if spec.layer_scale
        else "none in source"
    )
    _check_against_model(out, config)
    prov = Provenance.from_dict(ckpt.provenance.to_dict())
    prov.normalization = record
    return out, prov


def fold_lazy(weight: LazyTensor, bias: LazyTensor, gamma: LazyTensor) -> tuple[LazyTensor, LazyTensor]:
    """Lazily fold a layer-scale vector into a linear layer (``vitinit.ops.layer_scale``).

    Weight and bias are folded separately so that loading the bias never reads the (large) weight.
    """

    def folded_weight() -> torch.Tensor:
        return fold_layer_scale(weight.load().float(), None, gamma.load())[0]

    def folded_bias() -> torch.Tensor:
        # A bias is a one-column weight: the same row scaling applies.
        return fold_layer_scale(bias.load().float()[:, None], None, gamma.load())[0][:, 0]

    return (
        LazyTensor(weight.shape, torch.float32, folded_weight),
        LazyTensor(bias.shape, torch.float32, folded_bias),
    )


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
