"""Readers: detection, dropped keys, spec inference and numerical equivalence with the source models.

Equivalence: each family's tiny checkpoint (official container and key names, tests/fixtures) is read,
normalized and loaded into DetectionViT at the pre-training resolution with windows covering the whole
grid; its patch-token features must match the source's own implementation (timm / transformers) run on
patch tokens only (BEiT with its own bias minus the cls row/column).
"""

from __future__ import annotations

import pytest
import torch
from fixtures import make_fixtures as mf
from fixtures.reference import (
    backbone_features,
    converted_backbone,
    hf_features,
    timm_beit_features,
    timm_vit_features,
)

from vitinit.errors import CheckpointFormatError, SpecMismatchError
from vitinit.formats import read_checkpoint
from vitinit.formats.random import random_checkpoint

# name: (maker, reference features, file name, expected family, expected format, has own abs pos)
CASES = {
    "mae_full": (lambda p: mf.mae_checkpoint(p), timm_vit_features, "mae_full.pth", "mae", "mae/full"),
    "mae_encoder": (
        lambda p: mf.mae_checkpoint(p, full=False),
        timm_vit_features,
        "mae.pth",
        "mae",
        "mae/encoder",
    ),
    "mocov3": (
        lambda p: mf.mocov3_checkpoint(p),
        timm_vit_features,
        "moco.pth.tar",
        "mocov3",
        "mocov3/train",
    ),
    "deit": (lambda p: mf.deit_checkpoint(p), timm_vit_features, "deit.pth", "supervised", "supervised/deit"),
    "deit_distilled": (
        lambda p: mf.deit_checkpoint(p, distilled=True),
        timm_vit_features,
        "deit_d.pth",
        "supervised",
        "supervised/deit-distilled",
    ),
    "deit3": (
        lambda p: mf.deit3_checkpoint(p),
        timm_vit_features,
        "deit3.pth",
        "supervised",
        "supervised/deit",
    ),
    "timm_safetensors": (
        lambda p: mf.timm_safetensors(p),
        timm_vit_features,
        "vit.safetensors",
        "supervised",
        "supervised/timm-safetensors",
    ),
    "beit_pretrain": (
        lambda p: mf.beit_checkpoint(p),
        timm_beit_features,
        "beit_pt.pth",
        "beit",
        "beit/pretrain",
    ),
    "beit_finetuned": (
        lambda p: mf.beit_checkpoint(p, pretrain=False),
        timm_beit_features,
        "beit_ft.pth",
        "beit",
        "beit/finetuned",
    ),
    "hf_vit": (lambda p: mf.hf_folder(p, "vit"), hf_features, "hf_vit", "supervised", "hf/vit"),
    "hf_vit_mae": (lambda p: mf.hf_folder(p, "vit_mae"), hf_features, "hf_vit_mae", "mae", "hf/vit_mae"),
    "hf_beit": (lambda p: mf.hf_folder(p, "beit"), hf_features, "hf_beit", "beit", "hf/beit"),
    "hf_beit_per_block": (
        lambda p: mf.hf_folder(p, "beit_per_block"),
        hf_features,
        "hf_beit_pb",
        "beit",
        "hf/beit",
    ),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Every fixture written once: name -> (path, source model)."""
    root = tmp_path_factory.mktemp("formats")
    return {name: (root / c[2], c[0](root / c[2])) for name, c in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_detects_family_and_format(made, name):
    path, _ = made[name]
    ckpt = read_checkpoint(path, num_heads=mf.HEADS)
    assert (ckpt.provenance.family, ckpt.provenance.format) == CASES[name][3:5]
    assert (
        ckpt.spec.embed_dim == mf.WIDTH and ckpt.spec.depth == mf.DEPTH and ckpt.spec.patch_size == mf.PATCH
    )
    assert ckpt.spec.pretrain_grid == (mf.GRID, mf.GRID)
    assert len(ckpt.provenance.sha256) == 64


@pytest.mark.parametrize("name", list(CASES))
def test_matches_source_model_on_patch_tokens(made, name):
    path, source_model = made[name]
    ckpt = read_checkpoint(path, num_heads=mf.HEADS)
    x = torch.randn(2, 3, mf.IMG, mf.IMG, generator=torch.Generator().manual_seed(0))
    reference = CASES[name][1](source_model, x)
    # The file as written with the default (lossless) options: fine-tuned BEiT keeps its per-block tables.
    modes = ("keep", "fold") if ckpt.spec.layer_scale else ("keep",)
    for layer_scale in modes:
        net = converted_backbone(ckpt, layer_scale=layer_scale)
        diff = (backbone_features(net, x) - reference).abs().max().item()
        assert diff <= 1e-5, f"{name} ({layer_scale}): max |diff| {diff:.2e}"


def test_dropped_keys_are_recorded_with_reasons(made):
    mae = read_checkpoint(made["mae_full"][0], num_heads=mf.HEADS).provenance.dropped
    assert {"decoder_*", "mask_token", "cls_token", "norm.*"} <= set(mae)
    assert "MAE decoder" in mae["decoder_*"]
    moco = read_checkpoint(made["mocov3"][0], num_heads=mf.HEADS).provenance.dropped
    assert {"module.momentum_encoder.*", "module.predictor.*", "module.base_encoder.head.*"} <= set(moco)
    beit = read_checkpoint(made["beit_pretrain"][0], num_heads=mf.HEADS)
    assert {"lm_head.*", "mask_token", "*.relative_position_index"} <= set(beit.provenance.dropped)
    assert beit.spec.rel_pos == "shared" and beit.spec.layer_scale and not beit.spec.has_abs_pos
    distilled = read_checkpoint(made["deit_distilled"][0], num_heads=mf.HEADS)
    assert distilled.spec.num_prefix_tokens == 2 and "dist_token" in distilled.provenance.dropped


def test_beit_qv_bias_is_fused_with_zero_key_bias(made):
    path, beit = made["beit_pretrain"]
    bias = read_checkpoint(path, num_heads=mf.HEADS).tensors["blocks.1.attn.qkv.bias"].load()
    d = mf.WIDTH
    assert torch.equal(bias[:d], beit.blocks[1].attn.q_bias.detach())
    assert torch.equal(bias[d : 2 * d], torch.zeros(d))
    assert torch.equal(bias[2 * d :], beit.blocks[1].attn.v_bias.detach())


def test_explicit_family_wins_but_must_fit(made):
    mae_path = made["mae_encoder"][0]
    assert read_checkpoint(mae_path, family="supervised", num_heads=2).provenance.family == "supervised"
    with pytest.raises(CheckpointFormatError, match="not a beit checkpoint"):
        read_checkpoint(mae_path, family="beit", num_heads=2)
    with pytest.raises(CheckpointFormatError, match="not a mae checkpoint"):
        read_checkpoint(made["hf_vit"][0], family="mae", num_heads=2)


def test_tie_between_families_is_an_error(tmp_path, made):
    # A learned pos_embed, a classifier head AND MAE's decoder keys: supervised and MAE score the same.
    sd = torch.load(made["deit"][0], weights_only=True)["model"]
    full = torch.load(made["mae_full"][0], weights_only=False)["model"]
    sd.update({k: v for k, v in full.items() if k.startswith("decoder_") or k == "mask_token"})
    torch.save({"model": sd}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointFormatError, match="ambiguous.*mae and supervised"):
        read_checkpoint(tmp_path / "odd.pth", num_heads=2)
    assert read_checkpoint(tmp_path / "odd.pth", family="mae", num_heads=2).provenance.family == "mae"


def test_unknown_layout_and_unknown_keys(tmp_path, made):
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointFormatError, match="unknown checkpoint format"):
        read_checkpoint(tmp_path / "other.pth")
    sd = torch.load(made["deit"][0], weights_only=True)["model"]
    sd["blocks.0.attn.mystery"] = torch.zeros(2)
    torch.save({"model": sd}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointFormatError, match="unexpected key.*mystery"):
        read_checkpoint(tmp_path / "extra.pth", num_heads=2)


def test_spec_errors(tmp_path, made):
    with pytest.raises(SpecMismatchError, match="--num-heads"):
        read_checkpoint(made["deit"][0])  # custom width: the head count cannot be guessed
    with pytest.raises(SpecMismatchError, match="vit-b expects width 768"):
        read_checkpoint(made["deit"][0], model="vit-b", num_heads=2)
    assert read_checkpoint(made["hf_vit"][0]).spec.num_heads == mf.HEADS  # from config.json
    sd = torch.load(made["deit"][0], weights_only=True)["model"]
    sd["blocks.2.mlp.fc1.weight"] = torch.zeros(100, mf.WIDTH)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointFormatError, match=r"blocks.2.mlp.fc1.weight.*\(100, 32\)"):
        read_checkpoint(tmp_path / "bad.pth", num_heads=2)


def test_random_init_distributions_and_seed():
    ckpt = random_checkpoint("vit-s", seed=3)
    t = ckpt.tensors
    w = t["blocks.0.attn.qkv.weight"].load()
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001  # trunc-normal std 0.02
    assert torch.equal(t["blocks.0.mlp.fc1.bias"].load(), torch.zeros(1536))
    assert torch.equal(t["blocks.0.norm1.weight"].load(), torch.ones(384))
    bound = 1 / (3 * 16 * 16) ** 0.5
    patch = t["patch_embed.proj.weight"].load()
    assert patch.abs().max() <= bound and patch.std() > bound / 3  # PyTorch's default conv init
    assert not ckpt.spec.has_abs_pos and ckpt.spec.rel_pos == "none"
    assert torch.equal(w, random_checkpoint("vit-s", seed=3).tensors["blocks.0.attn.qkv.weight"].load())
    assert not torch.equal(w, random_checkpoint("vit-s", seed=4).tensors["blocks.0.attn.qkv.weight"].load())
    assert read_checkpoint(None, family="random", model="vit-s").spec.variant == "vit-s"


def test_mocov3_converted_file_without_arch_keeps_mocov3_head_count(tmp_path):
    """convert_to_deit output has no 'arch'; width 384 is MoCo v3's ViT-S with 12 heads, not DeiT-S's 6."""
    from timm.models.vision_transformer import VisionTransformer

    from vitinit.ops.pos_embed import sincos_2d

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=384, depth=1, num_heads=12, num_classes=0)
    sd = vit.state_dict()
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, 384), sincos_2d(384, (2, 2), first_half="row")[None]], 1)
    torch.save({"model": sd}, tmp_path / "linear-vit-s.pth")
    ckpt = read_checkpoint(tmp_path / "linear-vit-s.pth")
    assert ckpt.provenance.format == "mocov3/converted"
    assert ckpt.spec.num_heads == 12


def test_fine_tuned_mae_is_not_silently_called_supervised(tmp_path):
    """MAE fine-tuning trains pos_embed (no sin-cos left) and adds a head: auto-detection must ask for
    --from rather than label the run 'supervised'; with --from mae it reads as MAE."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=10, global_pool="avg",
        fc_norm=True,
    )
    torch.save({"model": vit.state_dict()}, tmp_path / "mae_finetuned.pth")
    with pytest.raises(CheckpointFormatError, match="ambiguous"):
        read_checkpoint(tmp_path / "mae_finetuned.pth", num_heads=2)
    ckpt = read_checkpoint(tmp_path / "mae_finetuned.pth", family="mae", num_heads=2)
    assert ckpt.provenance.format == "mae/finetuned"
    assert {"fc_norm.*", "head.*"} <= set(ckpt.provenance.dropped)


def test_fine_tuned_beit_with_an_absolute_embedding_is_beit(tmp_path):
    """A BEiT classifier with use_abs_pos_emb has a learned pos_embed and a head, like a supervised ViT; its
    q/v biases and relative tables decide."""
    from timm.models.beit import Beit

    beit = Beit(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=10,
                use_abs_pos_emb=True, init_values=0.1)
    torch.save({"model": beit.state_dict()}, tmp_path / "beit_abs.pth")
    ckpt = read_checkpoint(tmp_path / "beit_abs.pth", num_heads=2)
    assert ckpt.provenance.family == "beit" and ckpt.spec.has_abs_pos
