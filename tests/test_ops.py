"""The pure tensor functions in vitinit.ops, pinned against timm's reference helpers."""

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.layers.pos_embed_rel import gen_relative_position_index

from vitinit.ops.layer_scale import fold_layer_scale, fuse_qv_bias
from vitinit.ops.pos_embed import resize_abs_pos_embed
from vitinit.ops.rel_pos import (
    gather_rel_pos_bias,
    relative_position_index,
    resize_rel_pos_table,
    table_grid,
)


@pytest.mark.parametrize("grid", [(3, 3), (4, 6), (14, 14)])
def test_relative_position_index_matches_timm(grid):
    ours = relative_position_index(grid)
    ref = gen_relative_position_index(grid)  # BEiT/Swin indexing, cls rows excluded
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_index_for_a_smaller_grid_reads_the_same_offsets():
    """A 3x3 grid read from a table made for 5x5 sees the same bias per offset as a 3x3 table would."""
    torch.manual_seed(0)
    big = torch.randn((2 * 5 - 1) ** 2, 2)
    dh, dw = torch.meshgrid(torch.arange(-4, 5), torch.arange(-4, 5), indexing="ij")
    # Build the 3x3 table by cutting the central offsets out of the 5x5 table.
    central = (dh.abs() <= 2) & (dw.abs() <= 2)
    small = big[central.flatten()]
    a = gather_rel_pos_bias(big, relative_position_index((3, 3), (5, 5)))
    b = gather_rel_pos_bias(small, relative_position_index((3, 3)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resize_abs_pos_embed_is_plain_bicubic_like_timm_without_antialias():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 14 * 14, 32)
    ours = resize_abs_pos_embed(pe, (14, 14), (64, 64), num_prefix_tokens=1)
    ref = resample_abs_pos_embed(pe, [64, 64], num_prefix_tokens=1, antialias=False)[:, 1:]
    assert ours.shape == (1, 64, 64, 32)
    torch.testing.assert_close(ours.reshape(1, -1, 32), ref, rtol=0, atol=1e-6)
    # timm's default (antialias=True) differs even when upsampling: the reason we pass it explicitly.
    ref_aa = resample_abs_pos_embed(pe, [64, 64], num_prefix_tokens=1)[:, 1:]
    assert (ours.reshape(1, -1, 32) - ref_aa).abs().max() > 1e-3


def test_resize_abs_pos_embed_noop_keeps_values():
    pe = torch.randn(1, 2 + 16, 8)
    out = resize_abs_pos_embed(pe, (4, 4), (4, 4), num_prefix_tokens=2)
    torch.testing.assert_close(out.reshape(1, 16, 8), pe[:, 2:], rtol=0, atol=0)


def test_resize_rel_pos_table_keeps_extra_rows_and_centre():
    torch.manual_seed(0)
    table = torch.randn(27 * 27 + 3, 4)
    out = resize_rel_pos_table(table, (64, 64), num_extra_rows=3, keep_extra_rows=True)
    assert out.shape == (127 * 127 + 3, 4)
    torch.testing.assert_close(out[-3:], table[-3:], rtol=0, atol=0)
    # The geometric scheme places the source offsets 0, ±1 exactly on target offsets 0, ±1.
    src = table[:-3].reshape(27, 27, 4)
    dst = out[:-3].reshape(127, 127, 4)
    torch.testing.assert_close(dst[63, 63], src[13, 13], rtol=0, atol=1e-5)
    torch.testing.assert_close(dst[64, 63], src[14, 13], rtol=0, atol=1e-5)
    assert table_grid(out.shape[0], 3) == (64, 64)


@pytest.mark.parametrize("method", ["geometric", "bicubic"])
def test_resize_rel_pos_table_preserves_a_constant_table(method):
    table = torch.full((7 * 7, 3), 0.25)
    out = resize_rel_pos_table(table, (10, 10), method=method)
    assert out.shape == (19 * 19, 3)
    torch.testing.assert_close(out, torch.full_like(out, 0.25), rtol=0, atol=1e-5)


def test_resize_rel_pos_table_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown"):
        resize_rel_pos_table(torch.zeros(9, 1), (3, 3), method="nearest")


def test_fold_layer_scale_is_exact_for_a_linear_layer():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    gamma = torch.rand(8) * 0.2
    x = torch.randn(5, 16)
    w, b = fold_layer_scale(lin.weight.data, lin.bias.data, gamma)
    torch.testing.assert_close(x @ w.T + b, gamma * lin(x), rtol=0, atol=1e-6)


def test_fuse_qv_bias_puts_zeros_for_k():
    q, v = torch.randn(6), torch.randn(6)
    fused = fuse_qv_bias(q, v)
    torch.testing.assert_close(fused, torch.cat([q, torch.zeros(6), v]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# Patch-kernel resampling (FlexiViT pseudo-inverse, timm's resample_patch_embed)


def test_patch_kernel_resampling_is_timms_helper():
    from timm.layers import resample_patch_embed as timm_resample_patch_embed

    from vitinit.ops.patch_embed import resample_patch_embed

    w = torch.randn(48, 3, 14, 14, generator=torch.Generator().manual_seed(0))
    ours = resample_patch_embed(w, (16, 16))
    assert ours.shape == (48, 3, 16, 16)
    assert torch.equal(ours, timm_resample_patch_embed(w, [16, 16], interpolation="bicubic", antialias=True))
    assert resample_patch_embed(w, (14, 14)) is w
    # Not a plain resize of the kernel: that would scale the response by the area ratio and blur it.
    plain = torch.nn.functional.interpolate(w, size=(16, 16), mode="bicubic")
    assert (ours - plain).abs().max() > 0.1


def test_resampled_kernel_sees_a_resized_patch_as_the_old_kernel_saw_the_patch():
    """<B x, pinv(Bᵀ) w> = <x, w>: exact for upsampling (B has full column rank), up to float32 rounding."""
    from vitinit.ops.patch_embed import resample_patch_embed, resize_patches

    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(32, 3, 14, 14, generator=g), torch.rand(8, 3, 14, 14, generator=g)
    old = torch.nn.functional.conv2d(x, w).flatten(1)
    w16 = resample_patch_embed(w, (16, 16))
    new = torch.nn.functional.conv2d(resize_patches(x, (16, 16)), w16).flatten(1)
    assert (new - old).abs().max() <= 1e-4 * old.abs().max()


def test_patch_size_change_resizes_the_position_embedding_to_the_same_image():
    """MAE ViT-H/14's case at 224 px: grid 16x16 (patch 14) -> 14x14 (patch 16), cls row kept for later."""
    from timm.models.vision_transformer import VisionTransformer

    from vitinit.canonical import LazyTensor, validate
    from vitinit.formats._common import build_checkpoint, canonical_from_timm
    from vitinit.normalize.detection import detection_config, to_vitdet
    from vitinit.normalize.patch_size import resample_patch_size
    from vitinit.ops.patch_embed import resample_patch_embed

    vit = VisionTransformer(img_size=224, patch_size=14, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    sd = {k: LazyTensor.of(v.detach()) for k, v in vit.state_dict().items()}

    tensors, dropped = canonical_from_timm(sd, fmt="test")
    ckpt = build_checkpoint(tensors, dropped, family="mae", fmt="test", source="-", model=None, num_heads=2)
    assert ckpt.spec.pretrain_grid == (16, 16)
    out = resample_patch_size(ckpt, 16)
    validate(out)
    assert (out.spec.patch_size, out.spec.pretrain_grid) == (16, (14, 14))
    pos = out.tensors["pos_embed"].load()
    assert pos.shape == (1, 1 + 14 * 14, 32) and torch.equal(pos[:, :1], vit.pos_embed[:, :1].detach())
    grid = resize_abs_pos_embed(vit.pos_embed.detach(), (16, 16), (14, 14), num_prefix_tokens=1)
    assert torch.equal(pos[:, 1:], grid.flatten(1, 2))
    kernel = out.tensors["patch_embed.proj.weight"].load()
    assert torch.equal(kernel, resample_patch_embed(vit.patch_embed.proj.weight.detach(), (16, 16)))
    assert any("not function-preserving" in n for n in out.provenance.notes)
    assert not any("resampled" in n for n in ckpt.provenance.notes)  # the input is not mutated
    # The detection path: a patch-16 backbone config from the patch-14 source resamples on its own.
    cfg = detection_config(ckpt.spec, img_size=1024, patch_size=16)
    state, prov = to_vitdet(ckpt, cfg)
    assert state["patch_embed.proj.weight"].shape == (32, 3, 16, 16)
    assert state["pos_embed"].shape == (1, 64, 64, 32)
    assert torch.equal(state["patch_embed.proj.weight"].load(), kernel)
