"""The paper's error analysis: TIDE's ΔAP at IoU 0.5 for each error type, for boxes and masks.

TIDE (Bolya et al., ECCV 2020; https://github.com/dbolya/tide) sorts every false positive and missed object
into one error type, then reports how much AP@0.5 would rise if that type alone were fixed:

==========  ==============================================================================
``cls``     right place (IoU ≥ 0.5 with an object), wrong class
``loc``     right class, IoU in [0.1, 0.5)
``both``    wrong class and IoU in [0.1, 0.5)
``dupe``    right class and place, but the object was already taken by a higher-scoring detection
``bkg``     IoU < 0.1 with every object
``miss``    objects no detection could be fixed into
==========  ==============================================================================

We call the TIDE authors' own package (``tidecv``, an optional extra: ``pip install 'vitinit[tide]'``) rather
than re-implementing it, so the numbers are the ones the paper's figure used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from vitinit import __version__
from vitinit.analysis.runs import TIDE_FILE, RunFolderError, load_run
from vitinit.errors import DatasetError, MissingDependencyError
from vitinit.io.files import read_json, write_json

logger = logging.getLogger(__name__)

POS_THRESHOLD = 0.5  # the paper's analysis is at IoU 0.5
BG_THRESHOLD = 0.1  # below this IoU with every object, a detection is background (TIDE's default)
TIDE_FORMAT = "vitinit.tide"

# Our key -> tidecv's short name; the order is the paper's.
ERROR_TYPES: dict[str, str] = {
    "cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg", "miss": "Miss",
}
ERROR_LABELS: dict[str, str] = {
    "cls": "classification", "loc": "localization", "both": "cls + loc", "dupe": "duplicate",
    "bkg": "background", "miss": "missed",
}

Mode = Literal["bbox", "segm"]


def _tidecv():
    try:
        import tidecv
    except ImportError:
        raise MissingDependencyError(
            "error analysis needs the TIDE package (tidecv): pip install 'vitinit[tide]'"
        ) from None
    return tidecv


def _check_ground_truth(gt_json: Path) -> int:
    """The number of non-crowd objects; raises when there is nothing to analyse."""
    gt = read_json(gt_json, error=DatasetError, what="ground-truth annotations", max_bytes=None)
    anns = gt.get("annotations") if isinstance(gt, dict) else None
    objects = sum(1 for a in anns or () if not a.get("iscrowd", 0))
    if not objects:
        # tidecv divides by the number of classes with objects: an empty set has no AP to analyse.
        raise DatasetError(f"{gt_json} has no (non-crowd) annotations; nothing to analyse")
    return objects


def _nothing_detected(objects: int) -> dict:
    # tidecv cannot score this case: fixing every miss removes every object and its mean AP divides by zero.
    # No detection means AP 0 and every object missed; no single fix has a defined AP gain.
    return {
        "ap50": 0.0,
        "delta_ap": dict.fromkeys(ERROR_TYPES, 0.0),
        "counts": {**dict.fromkeys(ERROR_TYPES, 0), "miss": objects},
        "special": {"false_pos": 0.0, "false_neg": 0.0},
        "note": "no detections",
    }


def tide_errors(gt_json: str | Path, detections_json: str | Path, *, mode: Mode = "bbox") -> dict:
    """TIDE's AP@0.5 and the ΔAP of each error type for one detections file.

    Args:
        gt_json: COCO ground truth (needs ``segmentation`` and ``iscrowd`` on every annotation).
        detections_json: COCO results (``bbox`` entries for boxes, RLE ``segmentation`` for masks).
        mode: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{"ap50", "delta_ap": {type: ΔAP}, "counts": {type: n}, "special": {"false_pos", "false_neg"}}``,
        AP values in percent.

    Example:
        >>> errors = tide_errors("instances_val.json", "eval/iter_0000100/bbox.json")  # doctest: +SKIP
        >>> errors["delta_ap"]["loc"]  # doctest: +SKIP
        3.1
    """
    tidecv = _tidecv()
    gt_json, detections_json = Path(gt_json), Path(detections_json)
    if mode not in ("bbox", "segm"):
        raise ValueError(f"mode must be 'bbox' or 'segm', got {mode!r}")
    objects = _check_ground_truth(gt_json)
    detections = read_json(detections_json, error=DatasetError, what="detections", max_bytes=None)
    if not isinstance(detections, list):
        raise DatasetError(f"{detections_json} is not a COCO results list")
    if not detections:
        return _nothing_detected(objects)
    try:
        gt = tidecv.datasets.COCO(str(gt_json))
        dets = tidecv.datasets.COCOResult(str(detections_json))
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{gt_json} or {detections_json} is not in COCO format (missing {e})") from None

    tide = tidecv.TIDE(pos_threshold=POS_THRESHOLD, background_threshold=BG_THRESHOLD)
    run = tide.evaluate(gt, dets, mode=tidecv.TIDE.BOX if mode == "bbox" else tidecv.TIDE.MASK, name=mode)
    main = tide.get_main_errors()[mode]
    special = tide.get_special_errors()[mode]
    counts = {e.short_name: n for e, n in run.count_errors().items()}
    return {
        "ap50": float(run.ap),
        "delta_ap": {key: float(main[short]) for key, short in ERROR_TYPES.items()},
        "counts": {key: int(counts[short]) for key, short in ERROR_TYPES.items()},
        "special": {"false_pos": float(special["FalsePos"]), "false_neg": float(special["FalseNeg"])},
    }


def analyze_run(run_dir: str | Path, *, eval_dir: str | Path | None = None) -> dict:
    """Run the error analysis on a run's detections and write ``RUN_DIR/analysis/tide.json``.

    Args:
        run_dir: a folder written by ``vitinit bench``.
        eval_dir: which evaluation to analyse; default the one ``results.json`` names (``eval_dir``).

    Returns:
        What was written: run identity, thresholds, and :func:`tide_errors` for ``bbox`` and ``segm``
        (``segm`` is ``None`` when the run has no mask detections).

    Example:
        >>> analyze_run("runs/mae_vit-b_25ep")["bbox"]["delta_ap"]  # doctest: +SKIP
    """
    tidecv = _tidecv()  # fail before reading anything when the extra is missing
    run = load_run(run_dir)
    where = Path(run.path / eval_dir) if eval_dir is not None else run.eval_dir
    if where is None:
        raise RunFolderError(f"{run.path} has no evaluation yet (results.json names no eval_dir)")
    if run.val_annotations is None:
        raise RunFolderError(f"{run.path}/results.json does not name its val_annotations")
    if not (where / "bbox.json").is_file():
        raise RunFolderError(f"{where} has no bbox.json detections to analyse")

    logger.info("TIDE error analysis of %s", where)
    segm_path = where / "segm.json"
    result = {
        "format": TIDE_FORMAT,
        "run": run.name, "init": run.init, "variant": run.variant,
        "eval_dir": str(where.relative_to(run.path)) if where.is_relative_to(run.path) else str(where),
        "val_annotations": str(run.val_annotations),
        "pos_threshold": POS_THRESHOLD, "bg_threshold": BG_THRESHOLD,
        "tidecv_version": tidecv.__version__, "vitinit_version": __version__,
        "bbox": tide_errors(run.val_annotations, where / "bbox.json", mode="bbox"),
        "segm": tide_errors(run.val_annotations, segm_path, mode="segm") if segm_path.is_file() else None,
    }
    out = run.path / TIDE_FILE
    write_json(out, result)
    return result
