"""RoPE and the other backbone capabilities of today's ViTs (SwiGLU, sub-LN, pre-norm, q/k/v bias pattern).

- ``vitinit.ops.rope`` reproduces timm's own DINOv3 and EVA tables bit for bit.
- A windowed block with RoPE equals, window by window, the same attention computed explicitly on that
  window's tokens with their coordinates on the whole (padded) grid.
- sdpa and flex agree with RoPE on (and the BEiT tables on top).
- The new config fields serialize, and a plain ViT's config JSON is what it was before them.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vitinit.canonical import Checkpoint, LazyTensor, Provenance, ViTSpec, expected_shapes, validate
from vitinit.errors import SpecMismatchError
from vitinit.modeling.attention import window_partition, window_unpartition
from vitinit.modeling.layers import QuickGELU, activation
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig, load_backbone_state
from vitinit.normalize.options import NormalizeOptions
from vitinit.ops.rope import RopeSpec, apply_rope, rope_angles, rope_coords
from vitinit.targets import detectron2 as d2_target
from vitinit.targets import vitdet

DINO = RopeSpec("dinov3", 100.0)
EVA = RopeSpec("eva", 10000.0, (4, 4))


def test_rope_tables_equal_timms_own():
    timm_rope = pytest.importorskip("timm.layers.pos_embed_sincos")
    hd = 16
    cases = [
        (DINO, timm_rope.RotaryEmbeddingDinoV3(hd, temperature=100, rotate_half=True), (5, 7)),
        (EVA, timm_rope.RotaryEmbeddingCat(hd, in_pixels=False, ref_feat_shape=(4, 4)), (8, 6)),
    ]
    for spec, ref, grid in cases:
        emb = ref.get_embed(grid)
        angles = rope_angles(spec, rope_coords(spec, grid).flatten(0, 1), hd)
        x = torch.randn(2, 3, grid[0] * grid[1], hd)
        want = timm_rope.apply_rot_embed_cat(x, emb, half=not spec.interleaved)
        assert torch.equal(apply_rope(x, angles.cos(), angles.sin(), spec.interleaved), want), spec.variant


def test_coordinates_at_1024_px():
    """DINOv3: cell centres in [-1, 1] at any grid; EVA: the pre-training span rescaled (16 → 64 tokens)."""
    dino = rope_coords(DINO, (64, 64))
    assert dino[0, 0].tolist() == [-63 / 64, -63 / 64] and dino[-1, -1].tolist() == [63 / 64, 63 / 64]
    eva = rope_coords(RopeSpec("eva", 1e4, (16, 16)), (64, 64))
    assert eva[1, 2].tolist() == [0.25, 0.5] and eva[-1, -1].tolist() == [15.75, 15.75]
    padded = rope_coords(DINO, (5, 5), (7, 7))  # padding continues the rule past the image
    assert padded[6, 0, 0].item() == pytest.approx(2 * 6.5 / 5 - 1)


def _randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():  # norm weights around 1, everything else around 0
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + float(is_norm_weight))
    return net.eval()


def _config(rope: RopeSpec, **kw) -> ViTBackboneConfig:
    base = dict(
        embed_dim=32, depth=2, num_heads=2, mlp_hidden_dim=48, patch_size=8, img_size=56, window_size=3,
        global_block_indexes=(1,), rel_pos="none", rope=rope,
    )
    return ViTBackboneConfig(**{**base, **kw})


@pytest.mark.parametrize("rope", [DINO, RopeSpec("eva", 10000.0, (3, 3))], ids=["dinov3", "eva"])
def test_windowed_rope_equals_explicit_attention_per_window(rope):
    """A 7x7 grid in 3x3 windows (padded to 9x9): each window's attention, written out on its own tokens
    with their coordinates on the whole padded grid, gives the block's output."""
    net = _randomize(DetectionViT(_config(rope)), 0)
    blk = net.blocks[0]
    assert blk.window_size == 3
    x = torch.randn(2, 7, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = blk(x, None, False, net.rotary((7, 7), x.device)[0])
        y, padded = window_partition(blk.norm1(x), 3)  # (2·9, 9, C), windows row-major per image
        coords = rope_coords(rope, (7, 7), padded)  # (9, 9, 2) on the whole padded grid
        h, hd = 2, 16
        outs = []
        for idx in range(y.shape[0]):
            r, c = divmod(idx % 9, 3)
            angles = rope_angles(rope, coords[3 * r: 3 * r + 3, 3 * c: 3 * c + 3].reshape(9, 2), hd)
            q, k, v = blk.attn.qkv(y[idx]).reshape(9, 3, h, hd).permute(1, 2, 0, 3)
            q, k = (apply_rope(t, angles.cos(), angles.sin(), rope.interleaved) for t in (q, k))
            a = ((q @ k.transpose(-1, -2)) * hd**-0.5).softmax(-1) @ v
            outs.append(blk.attn.proj(a.transpose(0, 1).reshape(9, 32)))
        attn = window_unpartition(torch.stack(outs), 3, padded, (7, 7))
        z = x + attn
        want = z + blk.mlp(blk.norm2(z))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rel_pos", ["none", "shared"])
@pytest.mark.parametrize("rope", [DINO, EVA], ids=["dinov3", "eva"])
def test_flex_equals_sdpa_with_rope(rope, rel_pos):
    cfg = _config(rope, rel_pos=rel_pos, mlp="swiglu", mlp_norm=True, qkv_bias="qv", pre_norm=True)
    sdpa = _randomize(DetectionViT(cfg.replace(attention="sdpa")), 2)
    flex = DetectionViT(cfg.replace(attention="flex")).eval()
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(sdpa(x), flex(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_activations_and_masked_k_bias():
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(activation("gelu_tanh")(x), F.gelu(x, approximate="tanh"))
    net = _randomize(DetectionViT(_config(None, qkv_bias="qv")), 4)
    attn = net.blocks[0].attn
    t = torch.randn(1, 5, 32)
    with torch.no_grad():
        before = attn(t, None)
        attn.qkv.bias[32:64] += 100.0  # the k third is masked: changing it changes nothing
        torch.testing.assert_close(attn(t, None), before)
    no_bias = DetectionViT(_config(None, qkv_bias="none", patch_bias=False))
    assert "blocks.0.attn.qkv.bias" not in no_bias.state_dict()
    assert "patch_embed.proj.bias" not in no_bias.state_dict()


def test_config_json_round_trip_and_plain_vit_unchanged():
    cfg = _config(EVA, mlp="swiglu", mlp_norm=True, pre_norm=True, qkv_bias="qv", patch_bias=False)
    assert ViTBackboneConfig.from_json(cfg.to_json()) == cfg.replace(attention="auto")
    plain = json.loads(ViTBackboneConfig().to_json())
    assert not {"rope", "mlp", "mlp_norm", "pre_norm", "qkv_bias", "patch_bias"} & set(plain)
    assert ViTBackboneConfig.from_json(json.dumps(plain)) == ViTBackboneConfig()


def _canonical(spec: ViTSpec, seed: int = 0) -> Checkpoint:
    g = torch.Generator().manual_seed(seed)
    tensors = {k: LazyTensor.of(torch.randn(s, generator=g) * 0.1) for k, s in expected_shapes(spec).items()}
    return Checkpoint(spec, tensors, Provenance("dinov3", "test/synthetic", "memory"))


def test_every_capability_converts_to_a_strictly_loading_vitdet_file(tmp_path):
    spec = ViTSpec(
        embed_dim=32, depth=2, num_heads=2, patch_size=8, mlp_hidden_dim=40, pretrain_grid=(4, 4),
        num_prefix_tokens=1, layer_scale=True, rope=EVA, mlp="swiglu", mlp_norm=True, pre_norm=True,
        qkv_bias="none", patch_bias=False,
    )
    ckpt = _canonical(spec)
    validate(ckpt)
    ckpt.provenance.set_input_norm((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "test")
    path = tmp_path / "b.safetensors"
    vitdet.write(path, vitdet.normalize(ckpt, NormalizeOptions(img_size=64, window_size=4)))
    written = vitdet.read(path)
    assert written.config.rope == EVA and written.config.mlp == "swiglu" and written.config.pre_norm
    assert written.provenance["input_norm"]["mean"] == [0.5, 0.5, 0.5]
    assert "EVA RoPE" in written.provenance["normalization"]["rope"]
    net = DetectionViT(written.config)
    load_backbone_state(net, written.state_dict)
    everything = "EVA RoPE, SwiGLU MLP, MLP sub-LayerNorm or norm before the blocks .ln_pre."
    need = f"ViT has no {everything}, which these dinov3 weights need .*; use --to vitdet"
    with pytest.raises(SpecMismatchError, match=need):
        d2_target.normalize(ckpt, NormalizeOptions())
