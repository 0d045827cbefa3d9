"""What does the model detect? A few fixed val images with ground truth and predictions side by side.

Each picture is one val image twice: the ground truth on the left, the run's detections on the right, with
boxes, translucent masks and class names (and scores) drawn by torchvision's ``draw_bounding_boxes`` and
``draw_segmentation_masks``. The images are chosen from the annotations alone (:func:`choose_images`), so
every run on the same val set shows the same images, and successive evaluations of one run can be compared.

Detections are read from an evaluation folder of a run (``eval/iter_*/bbox.json`` and ``segm.json``, COCO's
results format). Both lists come from one loop over the same instances (``instances_to_coco``), so entry
``i`` of each is the same detection; when they do not line up (hand-edited files), only boxes are drawn.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from vitinit.analysis.runs import RunFolderError
from vitinit.data.coco import load_coco_json
from vitinit.evaluation.coco import MASK_THRESHOLD
from vitinit.io.save import atomic_path

NUM_IMAGES = 4
SCORE_THRESH = 0.5  # detections kept at test time go down to 0.05; below 0.5 they mostly clutter the picture
MASK_ALPHA = 0.45
MIN_SIDE = 512  # small images (the synthetic 128-px set) are enlarged so labels stay readable
# COCO's area ranges (pycocotools ``areaRng``): small < 32², medium < 96², large above.
SIZE_BUCKETS = ((32**2, "small"), (96**2, "medium"), (float("inf"), "large"))
# A fixed colour per class index (matplotlib's tab10, then tab20's light shades), the same in every picture.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141),
)


@dataclass
class Instances:
    """What one panel draws: boxes (N, 4) XYXY in pixels, masks (N, H, W) bool or None, one label each."""

    boxes: torch.Tensor
    masks: torch.Tensor | None
    labels: list[str]
    colors: list[tuple[int, int, int]]

    def __len__(self) -> int:
        return len(self.labels)


@functools.cache
def font_path() -> str | None:
    """A TrueType font for the labels: matplotlib's bundled DejaVu Sans (PIL's default cannot be sized)."""
    from matplotlib import font_manager

    try:
        props = font_manager.FontProperties(family="DejaVu Sans")
        return font_manager.findfont(props, fallback_to_default=False)
    except ValueError:
        return None


def color_of(category_id: int, category_ids: Sequence[int]) -> tuple[int, int, int]:
    index = list(category_ids).index(category_id) if category_id in category_ids else category_id
    return PALETTE[index % len(PALETTE)]


def size_bucket(area: float) -> str:
    return next(name for limit, name in SIZE_BUCKETS if area < limit)


def choose_images(coco: COCO, n: int = NUM_IMAGES) -> list[int]:
    """``n`` image ids that together cover as many classes and object sizes as possible; deterministic.

    Greedy set cover over each image's (class) and (size bucket) features: each step takes the image adding
    the most features not seen yet, ties going to the image with more objects, then to the lower id.
    Images without objects come last (they show only false positives).
    """
    features: dict[int, set] = {}
    for image_id in sorted(coco.imgs):
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        features[image_id] = {("class", a["category_id"]) for a in anns} | {
            ("size", size_bucket(a.get("area") or a["bbox"][2] * a["bbox"][3])) for a in anns
        }
    seen: set = set()
    chosen: list[int] = []
    count = {i: len(coco.imgToAnns.get(i, [])) for i in features}
    while len(chosen) < min(n, len(features)):
        best = max(
            (i for i in features if i not in chosen),
            key=lambda i: (len(features[i] - seen), count[i] > 0, count[i], -i),
        )
        chosen.append(best)
        seen |= features[best]
    return chosen


def find_image_dir(annotations: str | Path, coco: COCO) -> Path:
    """The folder holding the images of ``annotations``, by COCO's layout: a sibling of ``annotations/``.

    Works for COCO (``coco/annotations/instances_val2017.json`` → ``coco/val2017``) and the synthetic set
    (``annotations/instances_val.json`` → ``val``). Pass the folder explicitly for any other layout.
    """
    ann = Path(annotations)
    first = coco.imgs[min(coco.imgs)]["file_name"] if coco.imgs else None
    for base in (ann.parent, ann.parent.parent):
        for folder in sorted([base, *(p for p in base.iterdir() if p.is_dir())]):
            if first is not None and (folder / first).is_file():
                return folder
    raise RunFolderError(f"cannot find the images of {ann} (looked beside it); pass the image folder")


def ground_truth(coco: COCO, image_id: int) -> Instances:
    cats = sorted(coco.cats)
    anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    info = coco.imgs[image_id]
    masks = (
        torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).bool()
        if anns
        else torch.zeros((0, info["height"], info["width"]), dtype=torch.bool)
    )
    return Instances(
        boxes, masks, [coco.cats[a["category_id"]]["name"] for a in anns],
        [color_of(a["category_id"], cats) for a in anns],
    )


def load_detections(eval_dir: str | Path) -> dict[int, list[dict]]:
    """Detections per image id from ``bbox.json`` (+ ``segm.json``); each entry has a bbox, maybe a mask."""
    eval_dir = Path(eval_dir)
    boxes_file, masks_file = eval_dir / "bbox.json", eval_dir / "segm.json"
    if not boxes_file.is_file():
        raise RunFolderError(f"{eval_dir} has no bbox.json: no detections to draw")
    boxes = json.loads(boxes_file.read_text())
    masks = json.loads(masks_file.read_text()) if masks_file.is_file() else []
    same = len(masks) == len(boxes) and all(
        (b["image_id"], b["category_id"], b["score"]) == (m["image_id"], m["category_id"], m["score"])
        for b, m in zip(boxes, masks, strict=True)
    )
    per_image: dict[int, list[dict]] = defaultdict(list)
    for k, b in enumerate(boxes):
        per_image[b["image_id"]].append({**b, "segmentation": masks[k]["segmentation"]} if same else b)
    return per_image


def predictions(coco: COCO, dets: Sequence[dict], score_thresh: float = SCORE_THRESH) -> Instances:
    """The detections of one image above ``score_thresh``, highest score drawn last (on top)."""
    cats = sorted(coco.cats)
    kept = sorted((d for d in dets if d["score"] >= score_thresh), key=lambda d: d["score"])
    boxes = torch.tensor([d["bbox"] for d in kept], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    masks = None
    if kept and all("segmentation" in d for d in kept):
        rles = [{**d["segmentation"], "counts": d["segmentation"]["counts"].encode()} for d in kept]
        masks = torch.from_numpy(mask_utils.decode(rles)).permute(2, 0, 1).bool()
    names = {c: coco.cats[c]["name"] for c in cats}
    return Instances(
        boxes, masks, [f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}" for d in kept],
        [color_of(d["category_id"], cats) for d in kept],
    )


def draw(image: torch.Tensor, inst: Instances, *, min_side: int = MIN_SIDE) -> torch.Tensor:
    """``image`` (3, H, W) uint8 with translucent masks, boxes and labels; enlarged to ``min_side``."""
    scale = max(1.0, min_side / max(image.shape[-2:]))
    masks, boxes = inst.masks, inst.boxes
    if masks is not None and masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"masks are {tuple(masks.shape[-2:])}, the image {tuple(image.shape[-2:])}")
    if scale > 1:
        size = [round(image.shape[-2] * scale), round(image.shape[-1] * scale)]
        image = F.resize(image, size, antialias=True)
        boxes = boxes * scale
        if masks is not None and len(masks):
            masks = F.resize(masks[:, None].to(torch.uint8), size, F.InterpolationMode.NEAREST)[:, 0].bool()
    if masks is not None:
        # One call per mask, each blended over the last (as detectron2's Visualizer layers them): given all
        # masks at once, draw_segmentation_masks paints the pixels where two overlap black.
        for mask, color in zip(masks, inst.colors, strict=True):
            image = draw_segmentation_masks(image, mask[None], alpha=MASK_ALPHA, colors=[color])
    if len(inst):
        side = max(image.shape[-2:])
        image = draw_bounding_boxes(
            image, boxes, labels=inst.labels, colors=inst.colors, width=max(2, side // 300),
            font=font_path(), font_size=max(12, side // 40), fill_labels=True,
        )
    return image


def side_by_side(panels: Sequence[torch.Tensor], titles: Sequence[str], *, gap: int = 8) -> torch.Tensor:
    """Panels (3, H, W) uint8 in a row on white, each under a one-line title."""
    h = max(p.shape[-2] for p in panels)
    head = max(24, h // 18)
    w = sum(p.shape[-1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (w, h + head), "white")
    pen = ImageDraw.Draw(canvas)
    path = font_path()
    font = ImageFont.truetype(path, round(head * 0.65)) if path else ImageFont.load_default()
    x = 0
    for panel, title in zip(panels, titles, strict=True):
        canvas.paste(Image.fromarray(panel.permute(1, 2, 0).numpy()), (x, head))
        pen.text((x + 4, head // 2), title, fill="black", font=font, anchor="lm")
        x += panel.shape[-1] + gap
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def load_image(image_dir: Path, info: dict) -> torch.Tensor:
    return read_rgb(image_dir / info["file_name"])


def read_rgb(path: Path, error: type[Exception] = RunFolderError, what: str = "val image") -> torch.Tensor:
    """An image file as (3, H, W) uint8 RGB; an unreadable file is one ``error`` naming it."""
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {' '.join(str(e).split())}") from None


def gallery_images(
    annotations: str | Path,
    eval_dir: str | Path,
    *,
    image_dir: str | Path | None = None,
    image_ids: Sequence[int] | None = None,
    n: int = NUM_IMAGES,
    score_thresh: float = SCORE_THRESH,
) -> list[tuple[int, torch.Tensor]]:
    """``(image_id, picture)`` pairs: ground truth | predictions of each chosen val image, (3, H, W) uint8."""
    coco = load_coco_json(annotations)
    folder = Path(image_dir) if image_dir is not None else find_image_dir(annotations, coco)
    dets = load_detections(eval_dir)
    out = []
    for image_id in image_ids if image_ids is not None else choose_images(coco, n):
        image = load_image(folder, coco.imgs[image_id])
        gt, pred = ground_truth(coco, image_id), predictions(coco, dets.get(image_id, []), score_thresh)
        panels = [draw(image, gt), draw(image, pred)]
        titles = [f"ground truth: {len(gt)}", f"predictions ≥ {score_thresh:g}: {len(pred)}"]
        out.append((image_id, side_by_side(panels, titles)))
    return out


def save_png(picture: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(picture.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return path


def write_gallery(
    annotations: str | Path, eval_dir: str | Path, out_dir: str | Path, **kwargs
) -> list[Path]:
    """Write :func:`gallery_images` as ``out_dir/val_<image id>.png``; returns the paths.

    Example:
        >>> write_gallery(run.val_annotations, run.eval_dir, "report/gallery")  # doctest: +SKIP
    """
    return [
        save_png(pic, Path(out_dir) / f"val_{image_id:06d}.png")
        for image_id, pic in gallery_images(annotations, eval_dir, **kwargs)
    ]


def output_instances(
    output: dict[str, torch.Tensor],
    label_to_category: dict[int, int],
    names: dict[int, str],
    score_thresh: float = SCORE_THRESH,
) -> Instances:
    """A model's inference output for one image (``boxes``, ``labels``, ``scores``, ``masks`` (N, 1, H, W)
    probabilities) as a panel, kept at ``score_thresh`` and binarized as COCO evaluation binarizes masks."""
    keep = (output["scores"] >= score_thresh).nonzero().flatten().flip(0)  # highest score drawn last
    cats = sorted(label_to_category.values())
    category = [label_to_category[int(label)] for label in output["labels"][keep]]
    masks = output["masks"][keep, 0] > MASK_THRESHOLD if "masks" in output else None
    return Instances(
        output["boxes"][keep].float().cpu(), None if masks is None else masks.cpu(),
        [f"{names.get(c, c)} {float(s):.2f}" for c, s in zip(category, output["scores"][keep], strict=True)],
        [color_of(c, cats) for c in category],
    )
