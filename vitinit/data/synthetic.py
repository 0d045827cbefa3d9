"""An embedded instance-segmentation dataset of coloured shapes, written once into a cache in COCO format.

It exists so that the whole benchmark (data → Mask R-CNN → COCO AP) runs anywhere with no download: the
``demo`` recipe and the tests train on it. Images are generated deterministically from a seed, so two
machines (or two test runs) see identical pixels and annotations.

What makes it a detection problem rather than a colour-thresholding one:

- four classes that differ by *shape* (circle, rectangle, triangle, ring); colours are random per instance
  (``class_colours=True`` gives each class a typical colour instead: the demo's easier variant);
- COCO's image shapes: landscape and portrait sizes drawn from :data:`COCO_SIZES` (640×480, 640×427,
  480×640, 500×375, ..., small and large), scaled so that 640 px becomes ``image_size`` (the demo trains on
  small copies; ``image_size=640`` gives COCO's own sizes); ``sizes="square"`` gives square images instead;
- object sizes spread over COCO's small / medium / large area ranges (relative to the image's shorter side);
- shapes overlap: later shapes occlude earlier ones, and the annotation is the *visible* mask (as COCO's);
- a textured background (smooth gradient + noise) so edges are not free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from vitinit.errors import ConfigError

log = logging.getLogger(__name__)

CATEGORIES = ("circle", "rectangle", "triangle", "ring")
GENERATOR_VERSION = "3"  # bump when the drawing changes, so stale caches are not reused
CLASS_COLOURS = (
    (230, 40, 40),
    (40, 200, 40),
    (40, 80, 230),
    (230, 200, 30),
)
# (width, height) of COCO images, at COCO's 640-px scale: the most common landscape and portrait shapes
# (640×480, 640×427 / 426, their transposes, 500×375, 500×333), square ones, a wide one and small ones.
COCO_SIZES = (
    (640, 480), (640, 427), (480, 640), (500, 375), (640, 426), (427, 640), (375, 500), (500, 333),
    (640, 640), (612, 612), (640, 360), (320, 240), (240, 320),
)
SIZES = ("coco", "square")


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated files (and therefore the cache key)."""

    num_train: int = 256
    num_val: int = 48
    image_size: int = 128  # "coco": the long side of a 640-px COCO image; "square": the side
    sizes: str = "coco"  # "coco": shapes drawn from COCO_SIZES (scaled); "square": image_size × image_size
    max_objects: int = 5
    min_object_size: float = 0.1  # shape diameters are log-uniform in [min, max] × image size
    max_object_size: float = 0.85
    noise: float = 18.0  # std of the background's pixel noise
    class_colours: bool = (
        False  # each class gets a typical colour (jittered): an easier problem, for the demo
    )
    min_visible_fraction: float = 0.3  # an occluded shape with less of itself visible is not annotated
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sizes not in SIZES:
            raise ConfigError(f"sizes must be one of {SIZES}, got {self.sizes!r}")

    def image_shape(self, rng: np.random.Generator) -> tuple[int, int]:
        """(height, width) of the next image."""
        if self.sizes == "square":
            return self.image_size, self.image_size
        w, h = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
        scale = self.image_size / 640
        return max(1, round(h * scale)), max(1, round(w * scale))

    def key(self) -> str:
        payload = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticSplits:
    root: Path
    train_images: Path
    train_annotations: Path
    val_images: Path
    val_annotations: Path


def default_cache_dir() -> Path:
    """``$VITINIT_CACHE`` or ``$XDG_CACHE_HOME/vitinit`` (``~/.cache/vitinit``), read at call time."""
    if os.environ.get("VITINIT_CACHE"):
        return Path(os.environ["VITINIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitinit"


def synthetic_coco(
    spec: SyntheticSpec | None = None, *, cache_dir: str | Path | None = None
) -> SyntheticSplits:
    """The synthetic dataset's COCO files, generated on first use.

    Generation goes into a temporary folder that is renamed into place, so an interrupted run never leaves
    a half-written cache behind, and two processes racing for it both end with the same files.

    Example:
        >>> splits = synthetic_coco(SyntheticSpec(num_train=8, num_val=4))
        >>> splits.train_annotations.name
        'instances_train.json'
    """
    spec = spec or SyntheticSpec()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "synthetic" / spec.key()
    splits = _splits(target)
    if splits.val_annotations.is_file():
        return splits
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        rng = np.random.default_rng(spec.seed)
        for split, count in (("train", spec.num_train), ("val", spec.num_val)):
            _write_split(tmp, split, count, spec, rng)
        (tmp / "spec.json").write_text(json.dumps({**asdict(spec), "version": GENERATOR_VERSION}, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; its files are identical
            if not splits.val_annotations.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated the synthetic dataset in %s", target)
    return splits


def _splits(root: Path) -> SyntheticSplits:
    return SyntheticSplits(
        root=root,
        train_images=root / "train",
        train_annotations=root / "annotations" / "instances_train.json",
        val_images=root / "val",
        val_annotations=root / "annotations" / "instances_val.json",
    )


def _write_split(root: Path, split: str, count: int, spec: SyntheticSpec, rng: np.random.Generator) -> None:
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image, anns = render_image(spec, rng)
        image_id = i + 1
        file_name = f"{split}_{image_id:05d}.png"
        Image.fromarray(image).save(root / split / file_name, optimize=False, compress_level=1)
        images.append(
            {"id": image_id, "file_name": file_name, "width": image.shape[1], "height": image.shape[0]}
        )
        for ann in anns:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_id})
    coco = {
        "info": {"description": f"vitinit synthetic shapes ({split})", "version": GENERATOR_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CATEGORIES)],
    }
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def render_image(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One (H, W, 3) uint8 image and its COCO annotations (without ids), visible masks as RLE."""
    h, w = spec.image_shape(rng)
    s = min(h, w)  # object sizes are relative to the shorter side
    image = _background(h, w, rng, spec.noise)
    visible: list[np.ndarray] = []  # full masks, cut down by every shape drawn later
    classes: list[int] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        cls = int(rng.integers(len(CATEGORIES)))
        # Log-uniform sizes (by default 10% to 85% of the image side): COCO small, medium and large all occur.
        size = float(np.exp(rng.uniform(np.log(spec.min_object_size * s), np.log(spec.max_object_size * s))))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        mask = _shape_mask(CATEGORIES[cls], h, w, cx, cy, size, rng)
        if mask.sum() < 16:
            continue
        colour = rng.integers(0, 256, size=3)
        if spec.class_colours:
            colour = np.clip(np.array(CLASS_COLOURS[cls]) + rng.normal(0, 20, size=3), 0, 255)
        shade = rng.normal(0, 12, size=(h, w, 1))  # a little texture inside the shape
        image[mask] = np.clip(colour[None] + shade[mask], 0, 255)
        for earlier in visible:
            earlier &= ~mask
        visible.append(mask)
        classes.append(cls)
        full_areas.append(int(mask.sum()))
    anns = []
    for mask, cls, full in zip(visible, classes, full_areas, strict=True):
        area = int(mask.sum())
        if area < max(16, spec.min_visible_fraction * full):
            continue
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "category_id": cls + 1,
                "segmentation": rle,
                "area": float(area),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    return image.astype(np.uint8), anns


def _background(h: int, w: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    a, b = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    gradient = a * (1 - t) + b * t
    return np.clip(gradient + rng.normal(0, noise, size=(h, w, 3)), 0, 255)


def _shape_mask(
    kind: str, h: int, w: int, cx: float, cy: float, size: float, rng: np.random.Generator
) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    r = size / 2
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif kind == "rectangle":
        aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
        hw, hh = r * aspect**0.5, r / aspect**0.5
        draw.rectangle([cx - hw, cy - hh, cx + hw, cy + hh], fill=1)
    elif kind == "triangle":
        angle = rng.uniform(0, 2 * np.pi)
        pts = [
            (cx + r * np.cos(angle + k * 2 * np.pi / 3), cy + r * np.sin(angle + k * 2 * np.pi / 3))
            for k in range(3)
        ]
        draw.polygon(pts, fill=1)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:  # pragma: no cover - CATEGORIES is the only caller's source
        raise ValueError(kind)
    return np.asarray(canvas, dtype=bool).copy()
