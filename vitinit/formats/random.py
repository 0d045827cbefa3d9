"""The paper's random initialization ("from scratch"), as a canonical checkpoint.

Distributions, per tensor (those of timm's ViT / detectron2's ViTDet, which the paper's code became):

=================================  ====================================================================
Linear weights (qkv, proj, fc1,    truncated normal, mean 0, std 0.02, cut at ±2 absolute (timm's
fc2)                               ``trunc_normal_`` default, so in effect a plain normal)
Linear biases                      zeros
LayerNorm weight / bias            ones / zeros
patch_embed.proj (Conv2d)          PyTorch's default: weight Kaiming-uniform(a=√5), i.e. U(±1/√fan_in);
                                   bias U(±1/√fan_in), fan_in = C·p·p (ViTDet leaves the conv as built)
absolute position embedding        none here: normalization draws it at the detection grid, truncated
                                   normal std 0.02, exactly as for BEiT (no pre-trained embedding)
relative position tables           none here: normalization zero-initializes them (as for MAE etc.)
=================================  ====================================================================

Every tensor is drawn lazily from its own generator seeded by ``crc32(f"{seed}:{name}")``, so the result is
reproducible and independent of the order in which tensors are written.
"""

from __future__ import annotations

import math
import zlib

import torch

from vitinit.canonical import Checkpoint, LazyTensor, Provenance, ViTSpec, block_keys, expected_shapes
from vitinit.errors import SpecMismatchError
from vitinit.variants import get_variant

FAMILY = "random"


def _generator(seed: int, name: str) -> torch.Generator:
    # CPU generators keep only 32 bits of the seed, so seed and name are hashed together.
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def _draw(name: str, shape: tuple[int, ...], seed: int, fan_in: int) -> torch.Tensor:
    g = _generator(seed, name)
    leaf = name.rsplit(".", 1)[-1]
    if name.startswith("patch_embed."):
        bound = 1.0 / math.sqrt(fan_in)
        return torch.empty(shape).uniform_(-bound, bound, generator=g)
    if ".norm" in name:
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    t = torch.empty(shape)
    torch.nn.init.trunc_normal_(t, std=0.02, a=-2.0, b=2.0, generator=g)
    return t


def random_checkpoint(
    model: str | None = "vit-b", *, num_heads: int | None = None, seed: int = 0
) -> Checkpoint:
    """A canonical checkpoint of the named size drawn from the distributions above."""
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
    d, p = spec.embed_dim, spec.patch_size
    shapes = {"patch_embed.proj.weight": (d, spec.in_chans, p, p), "patch_embed.proj.bias": (d,)}
    want = expected_shapes(spec)
    for i in range(spec.depth):
        shapes.update({k: want[k] for k in block_keys(i, layer_scale=False)})
    fan_in = spec.in_chans * p * p
    tensors = {
        name: LazyTensor(shape, torch.float32, lambda n=name, s=shape: _draw(n, s, seed, fan_in))
        for name, shape in shapes.items()
    }
    prov = Provenance(
        family=FAMILY,
        format="random",
        source=f"random(seed={seed})",
        notes=[
            "paper's random init: trunc-normal(0.02) linears, zero biases, unit LayerNorms, "
            "PyTorch-default patch conv; pos embed and rel-pos tables are made by normalization"
        ],
    )
    return Checkpoint(spec, tensors, prov)
