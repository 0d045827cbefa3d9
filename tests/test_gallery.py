"""The gallery: fixed val images chosen for coverage, ground truth | predictions drawn with torchvision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _fake_runs import write_json
from PIL import Image
from pycocotools import mask as mask_utils

from vitinit.analysis import gallery
from vitinit.analysis.report import build_report
from vitinit.analysis.run_report import next_steps, write_run_report
from vitinit.data.coco import load_coco_json

CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
# COCO-like shapes: landscape and portrait, objects small (< 32²), medium and large.
IMAGES = [(640, 427), (427, 640), (500, 375), (375, 500), (640, 480)]  # (width, height)
OBJECTS = {  # image id -> (category, x, y, w, h)
    1: [(1, 20, 30, 20, 25), (3, 100, 100, 300, 200)],
    2: [(18, 50, 60, 60, 80)],
    3: [(1, 10, 10, 40, 40)],
    4: [],
    5: [(3, 200, 150, 22, 18), (18, 300, 100, 200, 250), (1, 10, 10, 70, 60)],
}


def _rle(x, y, w, h, width, height) -> dict:
    m = np.zeros((height, width), np.uint8)
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture()
def val_set(tmp_path):
    """A COCO-layout val set (``coco/annotations/*.json`` beside ``coco/val``) with real image files."""
    root = tmp_path / "coco"
    (root / "val").mkdir(parents=True)
    images, anns, dets = [], [], []
    rng = np.random.default_rng(0)
    for image_id, (w, h) in enumerate(IMAGES, 1):
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(60, 120, (h, w, 3), dtype=np.uint8)).save(root / "val" / name)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for k, (cat, x, y, bw, bh) in enumerate(OBJECTS[image_id]):
            seg = _rle(x, y, bw, bh, w, h)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0, "segmentation": seg})
            score = 0.9 if k == 0 else 0.3  # the first object is found confidently, the others barely
            dets.append({"image_id": image_id, "category_id": cat, "bbox": [x + 2, y, bw, bh], "score": score,
                         "segmentation": seg})
    gt = write_json(root / "annotations" / "instances_val.json",
                    {"images": images, "annotations": anns, "categories": CATS})
    eval_dir = tmp_path / "eval"
    write_json(eval_dir / "bbox.json", [{k: v for k, v in d.items() if k != "segmentation"} for d in dets])
    write_json(eval_dir / "segm.json", [{k: v for k, v in d.items() if k != "bbox"} for d in dets])
    return gt, eval_dir


def test_choose_images_covers_classes_and_sizes_deterministically(val_set):
    gt, _ = val_set
    coco = load_coco_json(gt)
    chosen = gallery.choose_images(coco, 3)
    # Image 5 has all three classes and all three sizes; image 1 adds nothing new after it, so the next
    # picks are the images with the most objects among those that add nothing (1), then the lowest id.
    assert chosen == [5, 1, 2]
    assert gallery.choose_images(coco, 3) == chosen
    assert gallery.choose_images(coco, 10) == [5, 1, 2, 3, 4]  # the empty image last


def test_gallery_draws_ground_truth_and_confident_predictions(val_set):
    gt, eval_dir = val_set
    pics = dict(gallery.gallery_images(gt, eval_dir, image_ids=[1, 4]))
    raw = torch.from_numpy(np.array(Image.open(gt.parent.parent / "val" / f"{1:012d}.jpg"))).permute(2, 0, 1)
    pic = pics[1]
    w, h = 640, 427  # no enlargement: the long side is above gallery.MIN_SIDE
    assert pic.dtype == torch.uint8 and pic.shape[0] == 3
    assert pic.shape[2] == 2 * w + 8  # two panels and the gap
    head = pic.shape[1] - h
    left, right = pic[:, head:, :w], pic[:, head:, w + 8:]
    car = (slice(None), slice(150, 250), slice(150, 350))  # inside the car's box and mask, off its edges
    # Ground truth: the car's mask is overlaid (pixels change); predictions: it scored 0.3 < 0.5, not drawn.
    assert (left[car].int() - raw[car].int()).abs().float().mean() > 20
    assert torch.equal(right[car], raw[car])
    person = (slice(None), slice(35, 50), slice(25, 38))
    assert (right[person].int() - raw[person].int()).abs().float().mean() > 20  # 0.9: drawn
    # An image without objects or detections is drawn unchanged on both sides.
    empty = pics[4]  # 375 × 500: enlarged to a long side of gallery.MIN_SIDE
    assert empty.shape[2] == 2 * 384 + 8
    assert torch.equal(empty[:, -512:, :384], empty[:, -512:, 384 + 8:])


def test_small_images_are_enlarged_and_unpaired_masks_are_skipped(val_set, tmp_path):
    gt, eval_dir = val_set
    segm = json.loads((eval_dir / "segm.json").read_text())
    write_json(eval_dir / "segm.json", segm[:-1])  # no longer one mask per box: boxes only
    dets = gallery.load_detections(eval_dir)
    assert all("segmentation" not in d for ds in dets.values() for d in ds)
    small = torch.zeros(3, 100, 60, dtype=torch.uint8)
    inst = gallery.Instances(torch.tensor([[10.0, 10, 50, 90]]), None, ["dog 0.99"], [(255, 0, 0)])
    out = gallery.draw(small, inst)
    assert out.shape[1:] == (gallery.MIN_SIDE, round(60 * gallery.MIN_SIDE / 100))
    assert out[0].amax() == 255  # the red box


def test_run_report_writes_gallery_and_next_steps(val_set, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tidecv", None)  # the report says how to get the error analysis
    gt, eval_dir = val_set
    run = tmp_path / "run"
    eval_to = run / "eval" / "iter_0000010"
    eval_to.mkdir(parents=True)
    for f in ("bbox.json", "segm.json"):
        (eval_to / f).write_text((eval_dir / f).read_text())
    point = {"iter": 10, "epoch": 1.0, "bbox": {"AP": 12.5}, "segm": {"AP": 10.0}}
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "eval", **point}) + "\n")
    write_json(run / "results.json", {
        "status": "finished", "name": "demo", "init": "random", "variant": "custom", "iters": 10,
        "epochs": 1.0, "final": point, "best": point, "val_annotations": str(gt),
        "eval_dir": "eval/iter_0000010",
    })
    md_path = write_run_report(run)
    assert md_path == run / "report" / "report.md"
    md = md_path.read_text()
    pngs = sorted((run / "report" / "gallery").glob("*.png"))
    assert [p.name for p in pngs] == [f"val_{i:06d}.png" for i in sorted([5, 1, 2, 3])]
    for p in pngs:
        assert f"](gallery/{p.name})" in md
    assert "## Predictions on fixed val images" in md
    errors = md[md.index("## Error analysis"):md.index("## Predictions")]
    assert "pip install 'vitinit[tide]'" in errors
    lines = next_steps(run)
    assert lines[0] == f"run folder: {run.resolve()}"
    assert any(f"vitinit report {run.resolve()}" in line for line in lines)
    assert any(f"vitinit bench --resume -o {run.resolve()}" in line for line in lines)
    assert any(str(run.resolve() / "report" / "gallery") in line for line in lines)

    # Images that cannot be found leave a note, not a failure.
    (gt.parent.parent / "val").rename(tmp_path / "elsewhere")
    report = build_report([run], tmp_path / "rep", analyze=False)
    assert not report.pictures and any("cannot find the images" in n for n in report.notes)
    report = build_report([run], tmp_path / "rep", analyze=False, image_dir=tmp_path / "elsewhere")
    assert len(report.pictures["demo"]) == 4


def test_show_data_pictures_follow_the_lsj_crop(val_set, tmp_path):
    from vitinit.analysis.data_view import PAD_GREY, on_canvas, sample_pictures, target_instances
    from vitinit.data.coco import CocoDetection
    from vitinit.data.transforms import lsj_transform

    gt, _ = val_set
    ds = CocoDetection(gt.parent.parent / "val", gt, transforms=lsj_transform(1024), train=True)
    torch.manual_seed(3)
    image, target = ds[0]
    crop = (image * 255).round().to(torch.uint8)
    canvas, inst = on_canvas(crop, target_instances(target, ds.class_names), 1024)
    h, w = crop.shape[-2:]
    assert canvas.shape == (3, 1024, 1024) and inst.masks.shape[-2:] == (1024, 1024)
    assert torch.equal(inst.masks[:, :h, :w], target["masks"].bool())
    assert not inst.masks[:, h:].any() and not inst.masks[:, :, w:].any()
    assert (canvas[:, h:] == PAD_GREY).all() and (canvas[:, :, w:] == PAD_GREY).all()
    assert inst.labels == [ds.class_names[v - 1] for v in target["labels"].tolist()]

    pics = sample_pictures(ds, [0, 1], size=1024, seed=5)
    assert [i for i, _ in pics] == [ds.ids[0], ds.ids[1]]
    assert all(p.shape[2] == 640 + 8 + 1024 for _, p in pics[:1])  # stored image | 1024² canvas
    again = sample_pictures(ds, [0, 1], size=1024, seed=5)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(pics, again, strict=True))


def test_cli_show_data(tmp_path, monkeypatch):
    from test_bench import MICRO
    from typer.testing import CliRunner
    from vitinit_cli.main import app

    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["show-data", "demo", *MICRO[:6], "-n", "2", "-o", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["train_000001.png", "train_000002.png"]
    assert str((tmp_path / "d").resolve()) in res.output.replace("\n", "")
    res = CliRunner().invoke(app, ["show-data", "no-such-recipe", "-o", str(tmp_path / "e")])
    assert res.exit_code == 1 and res.output.startswith("error:") and "no recipe named" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "e").exists()


class FakeWriter:
    """Records what a torch SummaryWriter would be given."""

    def __init__(self, *args, **kwargs) -> None:
        self.images: list[tuple[str, tuple, int]] = []
        self.scalars: list[str] = []

    def add_image(self, tag, img, step, dataformats="CHW"):
        assert dataformats == "CHW" and img.dtype == torch.uint8 and img.shape[0] == 3
        self.images.append((tag, tuple(img.shape), step))

    def add_scalar(self, tag, value, step):
        self.scalars.append(tag)

    def flush(self):
        pass

    def close(self):
        pass


def test_tensorboard_gallery_adds_the_fixed_images_per_evaluation(val_set):
    from vitinit.analysis.live_gallery import TensorBoardGallery

    gt, eval_dir = val_set
    writer = FakeWriter()
    tb = TensorBoardGallery(lambda: writer, gt, n=2)
    assert tb(100, eval_dir) == 2 and tb(200, eval_dir) == 2
    assert [(t, s) for t, _, s in writer.images] == [
        ("gallery/val_000005", 100), ("gallery/val_000001", 100),
        ("gallery/val_000005", 200), ("gallery/val_000001", 200),
    ]
    assert TensorBoardGallery(lambda: None, gt)(100, eval_dir) == 0  # no tensorboard: nothing, no error


def test_bench_ends_with_report_pictures_and_next_steps(tmp_path, monkeypatch):
    """A (micro) `vitinit bench`: TensorBoard images at each evaluation, the run's report, the next steps."""
    import sys
    import types

    from test_bench import MICRO
    from typer.testing import CliRunner
    from vitinit_cli.main import app

    writers: list[FakeWriter] = []
    fake_tb = types.ModuleType("torch.utils.tensorboard")
    fake_tb.SummaryWriter = lambda *a, **k: writers.append(FakeWriter()) or writers[-1]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake_tb)
    monkeypatch.setenv("VITINIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["bench", "demo", *MICRO, "eval.period=3", "-o", str(run), "--quiet"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    steps = sorted({s for _, _, s in writers[0].images})
    assert steps == [3, 6]  # the gallery at each evaluation
    assert len(writers[0].images) == 2 * 2  # the 2 val images of the micro set, twice
    md = (run / "report" / "report.md").read_text()
    pngs = sorted((run / "report" / "gallery").glob("val_*.png"))
    assert len(pngs) == 2 and all(f"](gallery/{p.name})" in md for p in pngs)
    assert "## Model complexity" in md and (run / "analysis" / "complexity.json").is_file()
    out = " ".join(res.output.split())
    assert f"run folder: {run.resolve()}" in out
    assert f"vitinit report {run.resolve()}" in out and f"vitinit bench --resume -o {run.resolve()}" in out


def test_overlapping_masks_are_layered_not_blacked_out():
    image = torch.full((3, 600, 600), 100, dtype=torch.uint8)
    masks = torch.zeros(2, 600, 600, dtype=torch.bool)
    masks[0, :300], masks[1, 200:500] = True, True
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 2)
    inst = gallery.Instances(boxes, masks, ["a", "b"], [(200, 0, 0), (0, 0, 200)])
    out = gallery.draw(image, inst).int()
    a = round(100 * (1 - gallery.MASK_ALPHA) + 200 * gallery.MASK_ALPHA)  # one layer of red
    assert out[:, 100, 300].tolist() == [a, 55, 55]
    # Both: red then blue on top; torchvision's single call would give 0.55 × 100 = 55 in every channel.
    both = out[:, 250, 300]
    assert both[2] > both[1] and both[0] > both[1] and both.tolist() != [55, 55, 55]
