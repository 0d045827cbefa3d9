"""A finished run's model back from its folder: ``vitinit eval`` (COCO AP on the full val set or another
COCO-format dataset) and ``vitinit predict`` (pictures of its detections on the user's own images, as
detectron2's ``demo/demo.py`` draws them).

The model is rebuilt from the run's ``recipe.yaml`` and the backbone architecture its ``weights.json``
recorded (the source weights are not read again: they may be on another machine), then the checkpoint's
weights replace all of it (``checkpoints/last.pth`` unless another file is given).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vitinit.analysis.gallery import draw, output_instances, read_rgb, save_png
from vitinit.analysis.run_report import write_run_report
from vitinit.bench.datasets import build_val_dataset
from vitinit.bench.weights import is_resnet
from vitinit.bench.worker import build_initialized_model, build_model, device_for, run_evaluation
from vitinit.data.coco import CocoDetection
from vitinit.engine.checkpoint import load_checkpoint
from vitinit.engine.run_folder import RunFolder, RunFolderError
from vitinit.errors import ConfigError, DatasetError, TrainingError, first_line
from vitinit.io.save import atomic_path
from vitinit.modeling.vit import ViTBackboneConfig, backbone_state_shapes
from vitinit.recipes import as_recipe
from vitinit.recipes.schema import Recipe

log = logging.getLogger(__name__)

EVAL_OVERRIDES = ("data.", "eval.")  # what `vitinit eval` may change: which images, how many, batch size
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
RESCORE_FILE = "metrics.json"


@dataclass
class Trained:
    model: torch.nn.Module  # eval mode, on ``device``
    recipe: Recipe
    val: CocoDetection
    device: torch.device
    checkpoint: Path
    iteration: int | None


def load_trained(
    run_dir: str | Path, *, checkpoint: str | Path | None = None, overrides: tuple[str, ...] = ()
) -> Trained:
    """The run's detector with the checkpoint's weights, its recipe (``data.*`` / ``eval.*`` overrides
    applied) and its val dataset (the categories' names and ids)."""
    folder = RunFolder(run_dir)
    bad = [o for o in overrides if not o.startswith(EVAL_OVERRIDES)]
    if bad:
        raise ConfigError(f"only data.* and eval.* keys can change for a trained model, got {bad[0]!r}")
    recipe = as_recipe(folder.read_recipe(), overrides)
    path = Path(checkpoint) if checkpoint is not None else folder.last_checkpoint
    if not path.is_file():
        raise TrainingError(f"no checkpoint {path}; pass --checkpoint FILE")
    state = load_checkpoint(path)
    weights = state.get("model", state)
    val = build_val_dataset(recipe)
    model = recorded_model(recipe, val.num_classes, folder, weights, path)
    if model is None:
        log.info("%s records no backbone_config (an older run): reading the run's source weights again for "
                 "the backbone's architecture", folder.weights)
        model, _ = build_initialized_model(recipe, val.num_classes)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(
            f"{path} does not fit the run's model with the {val.num_classes} categories of "
            f"{val.annotation_file} ({first[:160]})"
        ) from None
    default = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = device_for(recipe, default)
    return Trained(model.to(device).eval(), recipe, val, device, path, state.get("iter"))


def recorded_model(
    recipe: Recipe, num_classes: int, folder: RunFolder, weights: dict, checkpoint: Path
) -> torch.nn.Module | None:
    """The run's Mask R-CNN from the architecture its ``weights.json`` recorded, checked against the
    checkpoint's ``weights`` before anything is built, without reading the source weights again (the
    checkpoint replaces every weight). None for a run folder from before ``backbone_config`` was recorded."""
    provenance = folder.read_weights()
    recorded = provenance.get("backbone_config")
    if recorded is None:
        return None
    damaged = f"{folder.weights}: backbone_config"
    try:
        backbone = ViTBackboneConfig.from_json(json.dumps(recorded))
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise RunFolderError(f"{damaged} is not a backbone architecture ({first_line(e)[:120]})") from None
    if not is_resnet(recipe):
        _check_recorded_backbone(backbone, weights, damaged, checkpoint)
    backbone = backbone.replace(attention=recipe.model.attention)
    return build_model(recipe, backbone, num_classes, provenance.get("input_norm"))


def _check_recorded_backbone(
    backbone: ViTBackboneConfig, weights: dict, damaged: str, checkpoint: Path
) -> None:
    """The checkpoint's tensors are the truth: a recorded architecture that disagrees is refused before a
    model is built (a lying depth or image size would otherwise allocate what it says)."""
    prefix = "backbone.vit."
    patch = getattr(weights.get(prefix + "patch_embed.proj.weight"), "shape", None)
    blocks = {k.split(".")[3] for k in weights if k.startswith(prefix + "blocks.")}
    have = (int(patch[0]), len(blocks), int(patch[-1])) if patch is not None and len(patch) == 4 else None
    want = (backbone.embed_dim, backbone.depth, backbone.patch_size)
    if have != want:
        found = f"width {have[0]}, depth {have[1]}, patch {have[2]}" if have else "no ViT backbone"
        raise RunFolderError(
            f"{damaged} (width {want[0]}, depth {want[1]}, patch {want[2]}) does not match {checkpoint} "
            f"({found})"
        )
    shapes = backbone_state_shapes(backbone)  # on the meta device: no memory, bounded by the depth above
    for name, shape in shapes.items():
        tensor = weights.get(prefix + name)
        if tensor is None or tuple(getattr(tensor, "shape", ())) != shape:
            got = tuple(tensor.shape) if hasattr(tensor, "shape") else "nothing"
            raise RunFolderError(
                f"{damaged} gives {name} the shape {list(shape)}, {checkpoint} holds {got}"
            )


def evaluation_name(trained: Trained) -> str:
    """``eval/<checkpoint>-<annotations>[-first<N>]``: beside the run's own ``eval/iter_*`` folders."""
    n = trained.recipe.eval.max_images
    return f"{trained.checkpoint.stem}-{trained.val.annotation_file.stem}" + (f"-first{n}" if n else "")


def evaluate_run(
    run_dir: str | Path,
    overrides: tuple[str, ...] = (),
    *,
    checkpoint: str | Path | None = None,
    report: bool = True,
) -> dict:
    """COCO box and mask AP of a run's model on its whole val set (``eval.max_images`` is lifted unless
    given again) or on ``data.val.*``: written into ``RUN/eval/<name>/`` (``metrics.json``, ``bbox.json``,
    ``segm.json``) and, with ``report``, into the run's report (section "Evaluations with vitinit eval")."""
    trained = load_trained(run_dir, checkpoint=checkpoint, overrides=("eval.max_images=null", *overrides))
    out = Path(run_dir) / "eval" / evaluation_name(trained)
    result = run_evaluation(trained.model, trained.val, trained.recipe, trained.device, out)
    n = min(len(trained.val), trained.recipe.eval.max_images or len(trained.val))
    entry = {
        "kind": "rescore",
        "iter": trained.iteration,
        "checkpoint": str(trained.checkpoint),
        "val_annotations": str(trained.val.annotation_file.resolve()),
        "images": n,
        **result,
    }
    with atomic_path(out / RESCORE_FILE) as tmp:
        tmp.write_text(json.dumps(entry, indent=1))
    if report:
        write_run_report(run_dir, image_dir=trained.val.image_dir)
    return {**entry, "eval_dir": str(out)}


def image_files(paths: list[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder's images, sorted); none found is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{p} does not exist")
    if not out:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return out


def predict_images(
    run_dir: str | Path,
    images: list[str | Path],
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    score_thresh: float = 0.5,
) -> list[Path]:
    """Draw the run's detections (score ≥ ``score_thresh``) on each image into ``out_dir/<name>.png``, and
    all detections ≥ the model's test threshold into ``out_dir/detections.json``; returns the PNGs."""
    files = image_files(images)  # before the model is built: a typo fails in a second
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; give a folder for the pictures")
    trained = load_trained(run_dir, checkpoint=checkpoint)
    cats = trained.val.coco.cats
    names = {c: cats[c]["name"] for c in cats}
    written, records, used = [], [], set()
    with torch.no_grad():
        for path in files:
            image = read_rgb(path, DatasetError, "image")
            output = trained.model([(image.float() / 255).to(trained.device)])[0]
            output = {k: v.cpu() for k, v in output.items()}
            panel = output_instances(output, trained.val.label_to_category, names, score_thresh)
            picture = draw(image, panel)
            stem = path.stem if path.stem not in used else f"{path.stem}-{len(used)}"
            used.add(stem)
            written.append(save_png(picture, out / f"{stem}.png"))
            records += _records(path, output, trained.val.label_to_category, names)
    with atomic_path(out / "detections.json") as tmp:
        tmp.write_text(json.dumps(records, indent=1))
    return written


def _records(path: Path, output: dict, label_to_category: dict[int, int], names: dict[int, str]) -> list:
    boxes = output["boxes"].tolist()
    return [
        {"file": str(path), "category_id": label_to_category[int(label)],
         "category": names.get(label_to_category[int(label)]), "score": round(float(score), 4),
         "bbox_xyxy": [round(v, 2) for v in box]}
        for box, label, score in zip(boxes, output["labels"], output["scores"], strict=True)
    ]
