"""The paper's random initialization ("from scratch"), as a canonical checkpoint.

The distributions are the model's own (:meth:`DetectionViT.reset_parameters`, as timm's ViT / detectron2's
ViTDet): the backbone is built with the torch RNG seeded ``seed`` (the caller's RNG state is restored) and
its blocks and patch embedding become the checkpoint. It has no position embedding or relative-position
tables: normalization adds them (``abs_pos=auto`` draws the model's position-embedding init at the
detection grid; the tables are zeros, the model's init too).
"""

from __future__ import annotations

import torch

from vitinit.canonical import Checkpoint, LazyTensor, Provenance, ViTSpec
from vitinit.errors import SpecMismatchError
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig
from vitinit.variants import get_variant

FAMILY = "random"


def random_checkpoint(
    model: str | None = "vit-b", *, num_heads: int | None = None, seed: int = 0
) -> Checkpoint:
    """A canonical checkpoint of the named size drawn by the model's own initialization."""
    v = get_variant(model or "vit-b")
    heads = num_heads or v.num_heads
    if v.embed_dim % heads:
        raise SpecMismatchError(f"width {v.embed_dim} is not divisible by {heads} heads")
    # Random init has no pre-training resolution; patch 16 as in the paper's detectors.
    spec = ViTSpec(
        embed_dim=v.embed_dim,
        depth=v.depth,
        num_heads=heads,
        patch_size=16,
        mlp_hidden_dim=v.mlp_hidden_dim,
        has_abs_pos=False,
        num_prefix_tokens=0,
        variant=v.name,
    )
    # A one-token grid without positional parameters: only the blocks and the patch embedding are drawn.
    config = ViTBackboneConfig(
        embed_dim=spec.embed_dim, depth=spec.depth, num_heads=heads, patch_size=spec.patch_size,
        mlp_hidden_dim=spec.mlp_dim, img_size=spec.patch_size, global_block_indexes=(), rel_pos="none",
        use_abs_pos=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = DetectionViT(config).state_dict()
    tensors = {name: LazyTensor.of(t) for name, t in state.items()}
    prov = Provenance(
        family=FAMILY,
        format="random",
        source=f"random(seed={seed})",
        notes=[
            "paper's random init: DetectionViT.reset_parameters (trunc-normal 0.02 linears, zero biases, "
            "unit LayerNorms, PyTorch-default patch conv); pos embed and rel-pos tables: normalization"
        ],
    )
    return Checkpoint(spec, tensors, prov)
