"""The two attention kernels (sdpa, flex) against explicit softmax attention, with BEiT-style tables."""

from __future__ import annotations

import json

import pytest
import torch

from vitinit.errors import ConfigError
from vitinit.modeling.attention import Attention, RelativePositionBias, resolve_kernel
from vitinit.modeling.vit import DetectionViT, ViTBackboneConfig

CUDA = torch.cuda.is_available()


def _math_attention(attn: Attention, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d + bias) v, written out (what BEiT's and timm's attention compute)."""
    b, n, c = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * (c // h) ** -0.5 + bias
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def _table(grid, heads=3, seed=0) -> RelativePositionBias:
    torch.manual_seed(seed)
    rp = RelativePositionBias(grid, heads)
    with torch.no_grad():
        rp.relative_position_bias_table.normal_()  # zero-init would hide any indexing mistake
    return rp


@pytest.mark.parametrize("grid,table_grid", [((4, 4), (4, 4)), ((3, 5), (5, 5))])
def test_flex_and_sdpa_forward_match_explicit_math(grid, table_grid):
    torch.manual_seed(1)
    attn = Attention(24, 3)
    rp = _table(table_grid)
    x = torch.randn(2, grid[0] * grid[1], 24)
    with torch.no_grad():
        want = _math_attention(attn, x, rp(grid))
        sdpa = attn(x, rp(grid))
        flex = attn(x, rp.table_for(grid))
    torch.testing.assert_close(sdpa, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(flex, want, atol=1e-5, rtol=1e-5)


def test_table_gradient_through_sdpa_matches_explicit_math():
    torch.manual_seed(2)
    attn = Attention(24, 3)
    rp = _table((4, 4))
    x = torch.randn(2, 16, 24)
    w = torch.randn(2, 16, 24)
    grads = []
    for fn in (lambda: attn(x, rp((4, 4))), lambda: _math_attention(attn, x, rp((4, 4)))):
        rp.zero_grad(set_to_none=True)
        (fn() * w).sum().backward()
        grads.append(rp.relative_position_bias_table.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def _backbone(attention: str, rel_pos: str = "shared") -> DetectionViT:
    # 5×7 tokens with window 3: every window row/column is zero-padded (ViTDet's padding, not masked).
    cfg = ViTBackboneConfig(
        embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=112, window_size=3,
        global_block_indexes=(1, 3), rel_pos=rel_pos, attention=attention,
    )
    torch.manual_seed(0)
    model = DetectionViT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_()
    return model


@pytest.mark.parametrize("rel_pos", ["shared", "per_block"])
def test_backbone_flex_equals_sdpa_with_padded_windows(rel_pos):
    sdpa, flex = _backbone("sdpa", rel_pos), _backbone("flex", rel_pos)
    flex.load_state_dict(sdpa.state_dict())
    for shape in [(1, 3, 80, 112), (2, 3, 112, 80)]:  # landscape and portrait, smaller than the table
        x = torch.randn(shape)
        with torch.no_grad():
            for a, b in zip(sdpa(x), flex(x), strict=True):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_cpu_flex_is_inference_only():
    """The claim the kernel choice rests on: torch's FlexAttention refuses grad-requiring inputs on CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.randn(1, 1, 16, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, q, q)
    cpu = torch.device("cpu")
    assert resolve_kernel("auto", cpu, needs_grad=True) == "sdpa"
    assert resolve_kernel("auto", cpu, needs_grad=False) == "sdpa"
    assert resolve_kernel("flex", cpu, needs_grad=False) == "flex"
    # Until a GPU measures flex against sdpa (benchmarks/gpu_check.py), auto is sdpa on CUDA too.
    assert resolve_kernel("auto", torch.device("cuda"), needs_grad=True) == "sdpa"
    assert resolve_kernel("flex", torch.device("cuda"), needs_grad=True) == "flex"
    with pytest.raises(ConfigError, match="no CPU backward"):
        resolve_kernel("flex", cpu, needs_grad=True)
    model = _backbone("flex").train()
    with pytest.raises(ConfigError, match="cannot train on CPU"):
        model(torch.randn(1, 3, 48, 48))


def test_config_attention_field_and_old_metadata():
    with pytest.raises(ConfigError, match="attention must be one of"):
        ViTBackboneConfig(attention="xformers")
    old = json.loads(ViTBackboneConfig(attention="flex").to_json())
    assert "attention" not in old  # a run-time choice, not recorded in converted files
    old["extra"] = {}  # files written before the field went away
    assert ViTBackboneConfig.from_json(json.dumps(old)) == ViTBackboneConfig()


@pytest.mark.skipif(not CUDA, reason="needs CUDA (flex backward exists on GPU only)")
def test_cuda_flex_forward_and_table_gradient_match_sdpa():
    sdpa, flex = _backbone("sdpa").cuda().train(), _backbone("flex").cuda().train()
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 80, 112, device="cuda")
    outs, grads = [], []
    for model in (sdpa, flex):
        feats = model(x)
        sum(f.square().mean() for f in feats).backward()
        outs.append(feats)
        grads.append({n: p.grad for n, p in model.named_parameters() if "relative_position" in n})
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4, rtol=1e-4)
