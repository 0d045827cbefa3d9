"""Batched, sharded evaluation gives the unsharded results."""

from __future__ import annotations

import pytest
import torch

from vitinit.data.coco import CocoDetection, collate
from vitinit.data.synthetic import SyntheticSpec, synthetic_coco
from vitinit.data.transforms import test_transform as eval_transform
from vitinit.evaluation.coco import COCOEvaluator
from vitinit.evaluation.inference import inference_on_dataset, shard_indices
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
from vitinit.modeling.vit import ViTBackboneConfig


def test_shards_are_contiguous_disjoint_and_complete():
    for size in range(12):
        for world in range(1, 5):
            blocks = [shard_indices(size, r, world) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(size))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= -(-size // world)
    assert shard_indices(10, 1, 3) == range(4, 8)
    with pytest.raises(ValueError, match="outside"):
        shard_indices(10, 3, 3)


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    splits = synthetic_coco(
        SyntheticSpec(num_train=1, num_val=7, image_size=96, seed=3), cache_dir=tmp_path_factory.mktemp("c")
    )
    return CocoDetection(
        splits.val_images, splits.val_annotations, transforms=eval_transform(), with_targets=False
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    bb = ViTBackboneConfig(
        embed_dim=32, depth=4, num_heads=2, mlp_hidden_dim=64, img_size=96, window_size=3,
        global_block_indexes=(1, 3),
    )
    cfg = MaskRCNNConfig(
        backbone=bb, num_classes=4, fpn_channels=32, norm="BN", min_size=96, max_size=96, box_head_fc=64,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_detections_per_img=10,
    )
    return build_mask_rcnn(cfg).eval()


def _run(model, val, **kw) -> COCOEvaluator:
    ev = COCOEvaluator(val.annotation_file, val.label_to_category)
    return inference_on_dataset(model, val, ev, device="cpu", collate_fn=collate, **kw)


def test_sharded_results_equal_unsharded(model, val):
    whole = _run(model, val)
    assert len(whole.results["bbox"]) > 0 and whole.image_ids == sorted(whole.image_ids)
    parts = [_run(model, val, shard=(r, 3), num_workers=r % 2).state() for r in range(3)]
    merged = COCOEvaluator(val.annotation_file, val.label_to_category)
    merged.merge(parts)
    assert merged.results == whole.results  # same detections, same order
    assert merged.image_ids == whole.image_ids
    assert merged.evaluate() == whole.evaluate()


def test_batched_inference_matches_one_image_at_a_time(model, val):
    one, batched = _run(model, val), _run(model, val, batch_size=3, indices=range(len(val)))
    assert [d["image_id"] for d in batched.results["bbox"]] == [d["image_id"] for d in one.results["bbox"]]
    a = torch.tensor([d["bbox"] + [d["score"]] for d in one.results["bbox"]])
    b = torch.tensor([d["bbox"] + [d["score"]] for d in batched.results["bbox"]])
    torch.testing.assert_close(b, a, atol=2e-3, rtol=1e-4)  # boxes are rounded to 1e-3 px
    assert not model.training


def test_evaluation_runs_in_float32_unless_eval_amp_asks(model, val, tmp_path, monkeypatch):
    """detectron2 evaluates in fp32 (its do_test has no autocast): the training autocast must not leak into
    evaluation; eval.amp=bf16 is the explicit opt-in, and it does move the scores."""
    from vitinit.recipes import load_recipe, to_plain

    from vitinit.bench import run_evaluation

    seen = []
    heads = model.roi_heads.box_predictor
    hook = heads.register_forward_hook(lambda m, i, out: seen.append(out[0].dtype))
    results = {}
    try:
        for amp in ("none", "bf16"):
            # train.amp=bf16: the training autocast, which evaluation used to inherit.
            recipe = to_plain(load_recipe("demo", ["train.amp=bf16", f"eval.amp={amp}", "eval.batch_size=2"]))
            assert parse_eval_amp(recipe) == amp
            seen.clear()
            results[amp] = run_evaluation(model, val, recipe, torch.device("cpu"), tmp_path / amp)
            assert set(seen) == {torch.float32 if amp == "none" else torch.bfloat16}
    finally:
        hook.remove()
    assert to_plain(load_recipe("mae-vitb"))["eval"]["amp"] == "none"  # the default
    fp32 = _run(model, val).results["bbox"]
    bf16 = _run(model, val, amp="bf16").results["bbox"]
    assert [d["score"] for d in fp32] != [d["score"] for d in bf16]


def parse_eval_amp(recipe: dict) -> str:
    from vitinit.recipes.check import parse_recipe

    return parse_recipe(recipe).eval.amp
