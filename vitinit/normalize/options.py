"""What a normalization may change, as one value (:class:`NormalizeOptions`), and its result.

The defaults preserve the source's function: every tensor the source has is carried over, and what it
lacks is added as the identity (zero position embedding, zero relative bias), so at the pre-training grid
the backbone computes the source's patch tokens; at another grid the embedding and tables are resized
(the one change a detection resolution needs). Everything else is an explicit choice:

================  ===============================================================================
``abs_pos``       ``auto``: the source's embedding; zeros where it has none (BEiT); a random draw for
                  the random init (it has no function to keep). ``source`` / ``zero`` / ``random``
                  (truncated normal std 0.02, as ViTDet) / ``none`` (no embedding at all).
``rel_pos``       table layout. ``auto``: as the source (per-block tables stay per block, a shared table
                  or none gives the paper's two shared tables). ``shared``: the paper's two tables;
                  a fine-tuned BEiT's per-block tables are then AVERAGED (lossy, logged, recorded).
                  ``per_block`` / ``none``.
``rel_pos_init``  ``source`` (the source's tables, zeros where it has none) or ``zero``.
``layer_scale``   ``keep`` (``gamma_1/gamma_2``) or ``fold`` into ``attn.proj`` / ``mlp.fc2`` (exact).
================  ===============================================================================

The recipe's position ablations (``model.pos_abs`` / ``model.pos_rel``) map onto ``abs_pos`` /
``rel_pos`` + ``rel_pos_init`` (``vitinit.bench.weights``). A canonical → canonical step that changes
the architecture (resampling the patch embedding to another patch size) belongs here as an option too,
applied by ``vitinit.convert.normalize_source`` before the target's layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vitinit.canonical import LazyTensor, Provenance, ViTSpec
from vitinit.errors import ConfigError
from vitinit.modeling.vit import ViTBackboneConfig, quarter_block_indexes
from vitinit.normalize.bounds import check_sizes

ABS_POS_MODES = ("auto", "source", "zero", "random", "none")
REL_POS_MODES = ("auto", "shared", "per_block", "none")
REL_POS_INIT = ("source", "zero")
REL_POS_RESIZE = ("geometric", "bicubic")
LAYER_SCALE_MODES = ("keep", "fold")
GLOBAL_BLOCKS = ("quarter", "none", "all")


@dataclass(frozen=True)
class NormalizeOptions:
    """Target options of a normalization (see the module docstring for each mode)."""

    img_size: int = 1024
    window_size: int = 14
    # Indexes, or quarter (the paper: the last block of each quarter; None too) | none | all.
    global_block_indexes: tuple[int, ...] | str | None = None
    abs_pos: str = "auto"
    rel_pos: str = "auto"
    rel_pos_init: str = "source"
    rel_pos_resize: str = "geometric"
    layer_scale: str = "keep"
    drop_rel_pos: bool = False  # detectron2 target: drop BEiT tables it cannot hold instead of refusing
    patch_size: int | None = None  # resample the patch embedding to this size (lossy: only on request)
    seed: int = 0  # seed of the tensors drawn fresh (abs_pos=random)

    def __post_init__(self) -> None:
        check_sizes(self.img_size, self.patch_size, self.window_size)
        for value, allowed, name in (
            (self.abs_pos, ABS_POS_MODES, "abs_pos"),
            (self.rel_pos, REL_POS_MODES, "rel_pos"),
            (self.rel_pos_init, REL_POS_INIT, "rel_pos_init"),
            (self.rel_pos_resize, REL_POS_RESIZE, "rel_pos_resize"),
            (self.layer_scale, LAYER_SCALE_MODES, "layer_scale"),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        g = self.global_block_indexes
        if isinstance(g, str) and g not in GLOBAL_BLOCKS:
            raise ConfigError(f"global blocks must be {', '.join(GLOBAL_BLOCKS)} or indexes, got {g!r}")
        if g is not None and not isinstance(g, str):
            object.__setattr__(self, "global_block_indexes", tuple(int(i) for i in g))

    def global_blocks_for(self, depth: int) -> tuple[int, ...]:
        """The global block indexes for a backbone of ``depth`` blocks."""
        g = self.global_block_indexes
        if g is None or g == "quarter":
            return quarter_block_indexes(depth)
        if g == "none":
            return ()
        return tuple(range(depth)) if g == "all" else g


@dataclass
class Normalized:
    """A target's tensors (lazy: nothing is computed until loaded) and what was done to get them."""

    target: str
    spec: ViTSpec  # the source's architecture
    tensors: dict[str, LazyTensor]
    provenance: Provenance  # ``normalization`` filled
    config: ViTBackboneConfig | None = None  # the vitdet backbone (None for detectron2)
    options: NormalizeOptions = field(default_factory=NormalizeOptions)

    def state_dict(self) -> dict:
        """Every tensor materialized (what the bench loads instead of writing a file)."""
        return {k: t.load() for k, t in self.tensors.items()}
