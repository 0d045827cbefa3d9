"""COCO-format datasets, the synthetic shapes set, and the LSJ transform."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitinit.data.coco import CocoDetection, coco2017_split, collate, datasets_root
from vitinit.data.synthetic import CATEGORIES, COCO_SIZES, SyntheticSpec, synthetic_coco
from vitinit.data.transforms import (
    IMAGENET_MEAN_UINT8,
    FixedSizeCrop,
    Polygons,
    RecomputeBoxes,
    ScaleJitter,
    lsj_transform,
    polygon_box_in_window,
    test_transform,
)
from vitinit.errors import ConfigError, DatasetError

SPEC = SyntheticSpec(num_train=12, num_val=4, image_size=96, seed=3)  # COCO shapes: 96×72 ... 48×36


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return synthetic_coco(SPEC, cache_dir=tmp_path_factory.mktemp("cache"))


def test_synthetic_is_deterministic_and_cached(splits, tmp_path):
    again = synthetic_coco(SPEC, cache_dir=tmp_path)
    assert again.train_annotations.read_bytes() == splits.train_annotations.read_bytes()
    first = sorted(splits.train_images.iterdir())[0]
    assert (again.train_images / first.name).read_bytes() == first.read_bytes()
    # A second call reuses the cache (same folder, files untouched).
    mtime = again.val_annotations.stat().st_mtime_ns
    assert synthetic_coco(SPEC, cache_dir=tmp_path).val_annotations.stat().st_mtime_ns == mtime
    # Another seed is another dataset.
    other = synthetic_coco(SyntheticSpec(num_train=12, num_val=4, image_size=96, seed=4), cache_dir=tmp_path)
    assert other.root != again.root
    assert other.train_annotations.read_bytes() != again.train_annotations.read_bytes()


def test_synthetic_content(splits):
    coco = json.loads(splits.train_annotations.read_text())
    assert [c["name"] for c in coco["categories"]] == list(CATEGORIES)
    assert len(coco["images"]) == 12
    anns = coco["annotations"]
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}
    ds = CocoDetection(splits.train_images, splits.train_annotations)
    # Occlusion: some visible mask is smaller than the filled bounding box of its own shape class would allow,
    # i.e. later shapes cut earlier ones; check it directly by overlap of boxes within one image.
    by_image: dict[int, list] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    overlaps = sum(
        _overlap(a, b) for boxes in by_image.values() for i, a in enumerate(boxes) for b in boxes[i + 1 :]
    )
    assert overlaps > 0
    # Masks decode to the annotated area and the box is the mask's box.
    image, target = ds[0]
    info = coco["images"][0]
    assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.uint8
    assert target["masks"].shape[0] == target["labels"].shape[0] == target["boxes"].shape[0] > 0
    assert torch.allclose(
        masks_to_boxes(target["masks"]), target["boxes"] - torch.tensor([0, 0, 1, 1]), atol=1e-4
    )


def test_synthetic_images_have_cocos_shapes(tmp_path):
    spec = SyntheticSpec(num_train=40, num_val=2, image_size=160, max_objects=2, seed=5)
    coco = json.loads(synthetic_coco(spec, cache_dir=tmp_path).train_annotations.read_text())
    shapes = {(im["width"], im["height"]) for im in coco["images"]}
    assert {(160, 120), (160, 107), (120, 160)} <= shapes  # 640×480, 640×427 / 426, 480×640 at a quarter
    assert shapes <= {(round(w / 4), round(h / 4)) for w, h in COCO_SIZES}
    assert any(w > h for w, h in shapes) and any(w < h for w, h in shapes) and max(shapes) == (160, 160)
    for a in coco["annotations"]:  # objects anywhere on the image, inside it
        im = coco["images"][a["image_id"] - 1]
        x, y, w, h = a["bbox"]
        assert 0 <= x and x + w <= im["width"] and 0 <= y and y + h <= im["height"]
    square = SyntheticSpec(num_train=2, num_val=1, image_size=48, sizes="square")
    assert {(im["width"], im["height"]) for im in json.loads(
        synthetic_coco(square, cache_dir=tmp_path).train_annotations.read_text())["images"]} == {(48, 48)}
    with pytest.raises(ConfigError, match="sizes"):
        SyntheticSpec(sizes="round")


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _copy(splits, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(splits.val_images, images)
    ann = tmp_path / "val.json"
    shutil.copy(splits.val_annotations, ann)
    return images, ann, json.loads(ann.read_text())


def test_missing_image(splits, tmp_path):
    images, ann, coco = _copy(splits, tmp_path)
    (images / coco["images"][1]["file_name"]).unlink()
    with pytest.raises(DatasetError, match="missing"):
        CocoDetection(images, ann)


def test_broken_json(splits, tmp_path):
    images, ann, _ = _copy(splits, tmp_path)
    ann.write_text('{"images": [')
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoDetection(images, ann)
    ann.write_text('{"images": []}')
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        CocoDetection(images, ann)
    with pytest.raises(DatasetError, match="does not exist"):
        CocoDetection(images, tmp_path / "nope.json")


def test_annotation_outside_image_is_clipped(splits, tmp_path, caplog):
    images, ann, coco = _copy(splits, tmp_path)
    first = coco["annotations"][0]
    first["bbox"] = [-3.0, 10.0, 500.0, 5.0]  # pokes out left and right: clipped, as detectron2
    ann.write_text(json.dumps(coco))
    ds = CocoDetection(images, ann)
    width = ds.coco.imgs[first["image_id"]]["width"]
    assert next(a for a in ds.annotations[first["image_id"]] if a["id"] == first["id"])["bbox"] == [
        0.0, 10.0, float(width), 5.0]
    assert "1 box(es) clipped to their image" in caplog.text


def test_empty_dataset(splits, tmp_path):
    images, ann, coco = _copy(splits, tmp_path)
    coco["annotations"] = []
    ann.write_text(json.dumps(coco))
    CocoDetection(images, ann)  # evaluation may run on unannotated images
    with pytest.raises(DatasetError, match="no annotated images"):
        CocoDetection(images, ann, train=True)
    coco["images"] = []
    ann.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="no images"):
        CocoDetection(images, ann)


def test_unreadable_and_wrong_size_image(splits, tmp_path):
    images, ann, coco = _copy(splits, tmp_path)
    name, w, h = (coco["images"][0][k] for k in ("file_name", "width", "height"))
    Image.new("RGB", (10, 10)).save(images / name)
    ds = CocoDetection(images, ann)
    with pytest.raises(DatasetError, match=f"10x10 but the JSON says {w}x{h}"):
        ds[0]
    (images / name).write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot be read"):
        ds[0]


def test_datasets_root(monkeypatch, tmp_path):
    monkeypatch.delenv("VITINIT_DATASETS", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert str(datasets_root()) == "datasets"
    monkeypatch.setenv("DETECTRON2_DATASETS", "/d2")
    assert str(datasets_root()) == "/d2"
    monkeypatch.setenv("VITINIT_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path
    assert datasets_root("/flag") == type(tmp_path)("/flag")
    split = coco2017_split("val")
    assert split.images == tmp_path / "coco" / "val2017"
    assert split.annotations == tmp_path / "coco" / "annotations" / "instances_val2017.json"
    with pytest.raises(DatasetError):
        coco2017_split("test")


def test_lsj_output_and_targets(splits):
    ds = CocoDetection(
        splits.train_images, splits.train_annotations, transforms=lsj_transform(64), train=True
    )
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, target = ds[i]
        # Not padded: the model pads after normalization (detectron2's FixedSizeCrop(pad=False)).
        assert image.shape[0] == 3 and max(image.shape[1:]) <= 64 and image.dtype == torch.float32
        n = target["labels"].shape[0]
        assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, *image.shape[1:])
        if n:
            # Boxes and masks agree to the pixel (boxes exact, masks resized at pixel centres).
            tight = masks_to_boxes(target["masks"]) + torch.tensor([0, 0, 1, 1])
            assert (target["boxes"] - tight).abs().max() <= 1.0 + 1e-4
            h, w = image.shape[1:]
            assert (target["boxes"][:, 2] <= w).all() and (target["boxes"][:, 3] <= h).all()


def _one_object(box: list[float], hw: tuple[int, int]) -> tuple[tv_tensors.Image, dict]:
    image = tv_tensors.Image(torch.zeros(3, *hw, dtype=torch.uint8))
    x0, y0, x1, y1 = (int(v) for v in box)
    masks = torch.zeros(1, *hw, dtype=torch.uint8)
    masks[0, y0:y1, x0:x1] = 1
    corners = torch.tensor([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
    target = {"boxes": tv_tensors.BoundingBoxes([box], format="XYXY", canvas_size=hw),
              "masks": tv_tensors.Mask(masks), "labels": torch.tensor([1]),
              "polygons": Polygons(corners, canvas_size=hw),
              "polygon_instance": torch.zeros(4, dtype=torch.int64),
              "polygon_part": torch.zeros(4, dtype=torch.int64)}
    return image, target


@pytest.mark.parametrize("scale", [0.37, 0.61, 0.83, 1.0])
def test_lsj_boxes_are_scaled_with_the_image_without_the_nearest_mask_bias(scale):
    """detectron2 transforms boxes with the image; re-deriving them from NEAREST-resized masks shifted
    every edge down-right (+0.2…+0.46 px on average)."""
    image, target = _one_object([20.0, 10.0, 40.0, 30.0], (50, 60))
    # Factors 0.62 … 1.67 of the image; the 100-px window holds the result whole (no crop).
    t = lsj_transform(100, scale_range=(scale, scale), flip=False)
    out, got = t(image, target)
    (h, w) = out.shape[1:]
    r = min(100 / 50, 100 / 60) * scale  # ScaleJitter's factor, then whole pixels per axis
    assert (h, w) == (int(50 * r), int(60 * r))
    sx, sy = w / 60, h / 50
    torch.testing.assert_close(got["boxes"].as_subclass(torch.Tensor),
                               torch.tensor([[20 * sx, 10 * sy, 40 * sx, 30 * sy]]), rtol=0, atol=1e-4)
    # The mask is resized at pixel centres: its edges are within half a pixel of the box's.
    tight = masks_to_boxes(got["masks"]) + torch.tensor([0, 0, 1, 1])
    assert (tight - got["boxes"]).abs().max() <= 0.5 + 1e-4


def test_scale_jitter_resizes_masks_at_pixel_centres():
    mask = tv_tensors.Mask(torch.zeros(1, 10, 10, dtype=torch.uint8))
    mask[0, 2:8, 2:8] = 1
    out = ScaleJitter(target_size=(10, 10), scale_range=(0.5, 0.5))(mask)
    assert out[0].tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0],
                               [0, 0, 0, 0, 0]]  # legacy NEAREST would give rows/cols 1..3 of 0..4 too
    # ... but for 2:7 legacy NEAREST samples 0, 2, 4, 6, 8 → 1..3, NEAREST_EXACT 1, 3, 5, 7, 9 → 1..2.
    mask[0] = 0
    mask[0, 2:7, 2:7] = 1
    out = ScaleJitter(target_size=(10, 10), scale_range=(0.5, 0.5))(mask)
    assert torch.nonzero(out[0].any(0)).squeeze(1).tolist() == [1, 2]


def test_boxes_are_recomputed_from_the_polygons_clipped_to_the_crop():
    """detectron2's LSJ (recompute_boxes): a cut object's box is the box of its polygon inside the crop, not
    the clamped box; an uncut one keeps its exact polygon box; the crop removing it empties it."""
    # A triangle (0, 0), (40, 0), (0, 40) cut by a window x ≤ 30: inside, it spans y 0..40 and x 0..30; where
    # x = 30 its hypotenuse is at y = 10, so the rest of the window holds y up to 40 only at x = 0.
    tri = Polygons(torch.tensor([[0.0, 0.0], [40.0, 0.0], [0.0, 40.0]]), canvas_size=(50, 30))
    square = Polygons(torch.tensor([[5.5, 5.25], [7.5, 5.25], [7.5, 5.3], [5.5, 5.3]]), canvas_size=(50, 30))
    both = Polygons(torch.cat([tri, square]), canvas_size=(50, 30))
    target = {"boxes": tv_tensors.BoundingBoxes([[0.0, 0, 30, 40], [5, 5, 8, 6]], format="XYXY",
                                                canvas_size=(50, 30)),
              "masks": tv_tensors.Mask(torch.ones(2, 50, 30, dtype=torch.uint8)),
              "labels": torch.tensor([1, 2]),
              "polygons": both, "polygon_instance": torch.tensor([0, 0, 0, 1, 1, 1, 1]),
              "polygon_part": torch.zeros(7, dtype=torch.int64)}
    _, out = RecomputeBoxes()(None, dict(target))
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor),
                               torch.tensor([[0.0, 0.0, 30.0, 40.0], [5.5, 5.25, 7.5, 5.3]]))
    assert "polygons" not in out and "polygon_part" not in out
    # Cut by a crop at x = 30..60 of a 60-wide image: only the triangle's x ≤ 10 part is left... in the
    # crop's frame, the piece x ∈ [30, 40], y ∈ [0, 10] → [0, 0, 10, 10].
    shifted = Polygons(torch.tensor([[0.0, 0.0], [40.0, 0.0], [0.0, 40.0]]) - torch.tensor([30.0, 0.0]),
                       canvas_size=(50, 30))
    one = {**target, "boxes": target["boxes"][:1], "masks": target["masks"][:1], "labels": torch.tensor([1]),
           "polygons": shifted, "polygon_instance": torch.zeros(3, dtype=torch.int64),
           "polygon_part": torch.zeros(3, dtype=torch.int64)}
    _, out = RecomputeBoxes()(None, one)
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    gone = {**one, "polygons": Polygons(shifted - torch.tensor([20.0, 0.0]), canvas_size=(50, 30))}
    assert RecomputeBoxes()(None, gone)[1]["boxes"].tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_lsj_keeps_boxes_down_to_1e5_px_and_flips_polygons_as_detectron2():
    """A sub-pixel object survives LSJ (detectron2 keeps boxes above 1e-5 px; a 1-px floor dropped 5.5 % of
    COCO instances at scale 0.1), and the flip maps x → W − x, as detectron2's HFlipTransform."""
    hw = (50, 60)
    poly = torch.tensor([[20.0, 10.0], [20.4, 10.0], [20.4, 10.3], [20.0, 10.3]])
    target = {"boxes": tv_tensors.BoundingBoxes([[20.0, 10.0, 20.4, 10.3]], format="XYXY", canvas_size=hw),
              "masks": tv_tensors.Mask(torch.zeros(1, *hw, dtype=torch.uint8)), "labels": torch.tensor([3]),
              "polygons": Polygons(poly, canvas_size=hw),
              "polygon_instance": torch.zeros(4, dtype=torch.int64),
              "polygon_part": torch.zeros(4, dtype=torch.int64)}
    image = tv_tensors.Image(torch.zeros(3, *hw, dtype=torch.uint8))
    t = lsj_transform(100, scale_range=(0.5, 0.5), flip=False)  # factor 1 (100/60 × 0.5 = 0.833 → 41×50)
    _, out = t(image, target)
    (h, w) = out["masks"].shape[-2:]
    sx, sy = w / 60, h / 50
    assert out["labels"].tolist() == [3]  # 0.33 × 0.25 px: kept, as detectron2
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor),
                               torch.tensor([[20 * sx, 10 * sy, 20.4 * sx, 10.3 * sy]]))
    flipped = v2.RandomHorizontalFlip(1.0)(Polygons(poly, canvas_size=hw))
    torch.testing.assert_close(flipped.as_subclass(torch.Tensor)[:, 0], 60 - poly[:, 0])


def test_fixed_size_crop_pads_bottom_right():
    """detectron2's LSJ keeps a small image top-left; v2's RandomCrop would place it randomly."""
    image = tv_tensors.Image(torch.full((3, 20, 30), 7, dtype=torch.uint8))
    masks = tv_tensors.Mask(torch.ones(1, 20, 30, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[2.0, 3.0, 12.0, 15.0]], format="XYXY", canvas_size=(20, 30))
    out_image, out_masks, out_boxes = FixedSizeCrop(64)(image, masks, boxes)
    assert out_image.shape == (3, 64, 64)
    assert (out_image[:, :20, :30] == 7).all()
    assert (out_image[:, 20:, :] == torch.tensor(IMAGENET_MEAN_UINT8)[:, None, None]).all()
    assert (out_image[:, :, 30:] == torch.tensor(IMAGENET_MEAN_UINT8)[:, None, None]).all()
    assert out_masks[:, :20, :30].all() and not out_masks[:, 20:].any() and not out_masks[:, :, 30:].any()
    assert out_boxes.tolist() == [[2.0, 3.0, 12.0, 15.0]]
    # Larger than the target: a random 64×64 window, boxes shifted with it.
    big = tv_tensors.Image(torch.arange(100 * 90, dtype=torch.float32).reshape(1, 100, 90))
    torch.manual_seed(1)
    crop = FixedSizeCrop(64)(big)
    assert crop.shape == (1, 64, 64)
    top, left = divmod(int(crop[0, 0, 0]), 90)
    assert torch.equal(crop[0], big[0, top : top + 64, left : left + 64])


def test_test_transform_and_collate(splits):
    ds = CocoDetection(splits.val_images, splits.val_annotations, transforms=test_transform())
    image, target = ds[0]
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    info = ds.coco.imgs[ds.ids[0]]
    assert image.shape == (3, info["height"], info["width"])
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == len(targets) == 2 and targets[1]["image_id"] == ds.ids[1]


def test_polygon_segmentation(splits, tmp_path):
    """COCO's own train2017 uses polygons for most objects; they decode like RLE."""
    images, ann, coco = _copy(splits, tmp_path)
    a = coco["annotations"][0]
    a["segmentation"] = [[10.0, 10.0, 30.0, 10.0, 30.0, 20.0, 10.0, 20.0]]
    a["bbox"] = [10.0, 10.0, 20.0, 10.0]
    ann.write_text(json.dumps(coco))
    ds = CocoDetection(images, ann)
    idx = ds.ids.index(a["image_id"])
    _, target = ds[idx]
    k = [i for i, b in enumerate(target["boxes"].tolist()) if b == [10.0, 10.0, 30.0, 20.0]][0]
    m = target["masks"][k].numpy()
    assert m[12:19, 12:29].all() and m.sum() == 20 * 10


def test_evaluation_datasets_skip_target_decoding(splits):
    ds = CocoDetection(
        splits.val_images, splits.val_annotations, transforms=test_transform(), with_targets=False
    )
    image, target = ds[0]
    assert target == {"image_id": ds.ids[0]} and image.dtype == torch.float32


def test_lsj_boxes_match_detectron2s_recompute_boxes():
    """Side by side with detectron2's transforms (resize, crop, flip: apply_polygons, the crop through
    shapely) and PolygonMasks.get_bounding_boxes, on star-shaped polygons the crop cuts."""
    pytest.importorskip("shapely")
    from _detectron2 import import_detectron2

    T = import_detectron2("detectron2.data.transforms")
    from detectron2.structures import PolygonMasks

    gen = torch.Generator().manual_seed(0)
    hw, new_hw, (top, left, ch, cw) = (60, 80), (90, 120), (20, 30, 50, 60)
    stars = []
    for _ in range(12):
        centre = torch.rand(2, generator=gen) * torch.tensor([80.0, 60.0])
        angles = torch.linspace(0, 2 * torch.pi, 11)[:-1]
        radius = (5 + 25 * torch.rand(10, generator=gen)) * (1 + (torch.arange(10) % 2))
        stars.append(centre + radius[:, None] * torch.stack([angles.cos(), angles.sin()], 1))
    ref = T.TransformList([T.ResizeTransform(*hw, *new_hw), T.CropTransform(left, top, cw, ch),
                           T.HFlipTransform(cw)])
    moved = [[p.reshape(-1) for p in ref.apply_polygons([s.double().numpy()])] for s in stars]
    want = PolygonMasks(moved).get_bounding_boxes()

    polygons = Polygons(torch.cat(stars), canvas_size=hw)
    polygons = F.horizontal_flip(F.crop(F.resize(polygons, list(new_hw)), top, left, ch, cw))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(12, 4), format="XYXY", canvas_size=(ch, cw)),
              "masks": tv_tensors.Mask(torch.zeros(12, ch, cw, dtype=torch.uint8)),
              "labels": torch.ones(12, dtype=torch.int64), "polygons": polygons,
              "polygon_instance": torch.arange(12).repeat_interleave(10),
              "polygon_part": torch.zeros(120, dtype=torch.int64)}
    got = RecomputeBoxes()(None, target)[1]["boxes"].as_subclass(torch.Tensor)
    inside = torch.isfinite(want.tensor).all(1) & (want.tensor[:, 2] > want.tensor[:, 0])
    assert inside.sum() >= 6  # most stars reach into the crop; some are cut
    torch.testing.assert_close(got[inside], want.tensor[inside], rtol=0, atol=1e-3)
    assert (got[~inside] == 0).all()


def test_polygon_box_in_window_is_exact_for_concave_polygons():
    # A C-shape whose spine lies left of the window: only its lower arm reaches in (x 0..10, y 10..20).
    # Clipping side by side (Sutherland–Hodgman) would join the arms along x = 0 and report y from 0.
    c = np.array([[-10, -10], [10, -10], [10, -2], [-5, -2], [-5, 10], [10, 10], [10, 20], [-10, 20]], float)
    np.testing.assert_allclose(polygon_box_in_window(c, 30, 30), [0, 10, 10, 20])
    # A window corner inside the polygon bounds the box; a polygon that misses the window gives None.
    square = np.array([[-5, -5], [5, -5], [5, 5], [-5, 5]], float)
    np.testing.assert_allclose(polygon_box_in_window(square, 30, 30), [0, 0, 5, 5])
    assert polygon_box_in_window(square + 50, 30, 30) is None
