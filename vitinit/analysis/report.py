"""Compare runs the way the paper does: a table of box/mask AP per initialization and model size, the
AP-versus-schedule curves, and the error-analysis bars, written as PNGs plus a Markdown summary.

Unfinished runs (status ``running`` or ``failed``) are skipped with a warning and listed in the summary:
their numbers would mix partial schedules into a comparison of finished ones. A folder that is not a run is
an error, unless it is a folder of runs (then its run sub-folders are used).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitinit.analysis import gallery, plots
from vitinit.analysis.complexity import COMPLEXITY_FILE
from vitinit.analysis.plots import init_name, init_sort_key, variant_name, variant_sort_key
from vitinit.analysis.runs import RESULTS_FILE, Run, RunFolderError, load_run
from vitinit.analysis.tide import ERROR_LABELS, ERROR_TYPES, analyze_run
from vitinit.errors import MissingDependencyError, VitinitError
from vitinit.io.files import read_json
from vitinit.io.save import atomic_path

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class Report:
    """What :func:`build_report` wrote and what it left out."""

    out_dir: Path
    runs: list[Run]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    markdown: str = ""
    pictures: dict[str, list[Path]] = field(default_factory=dict)  # run name -> its gallery PNGs


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is a run folder, or a folder whose sub-folders are runs; anything else is an error."""
    if not paths:
        raise RunFolderError("no run folders given")
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise RunFolderError(f"{p} is not a folder")
        if (p / RESULTS_FILE).is_file():
            found.append(p)
            continue
        children = sorted(c for c in p.iterdir() if (c / RESULTS_FILE).is_file())
        if not children:
            raise RunFolderError(f"{p} is not a run folder (no {RESULTS_FILE}) and holds no run folders")
        found.extend(children)
    return list(dict.fromkeys(found))  # keep order, drop repeats


def best_runs(runs: Sequence[Run]) -> dict[tuple[str, str], Run]:
    """For each (init, variant) the run whose best evaluation has the highest box AP (the paper's tables)."""
    best: dict[tuple[str, str], Run] = {}
    for r in runs:
        ap = _ap(r, "bbox")
        cur = best.get((r.init, r.variant))
        if ap is not None and (cur is None or ap > _ap(cur, "bbox")):
            best[(r.init, r.variant)] = r
    return best


def _ap(run: Run, metric: str, key: str = "AP") -> float | None:
    return None if run.best is None else getattr(run.best, metric).get(key)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell == "–"
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; columns of numbers are right-aligned."""
    numeric = [bool(rows) and all(_is_number(row[c]) for row in rows) for c in range(len(header))]
    rule = ["---:" if n else "---" for n in numeric]
    return ["| " + " | ".join(row) + " |" for row in (header, rule, *rows)]


def comparison_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """The paper's table: a row per init, a column per size, cells ``box AP / mask AP (epochs)``."""
    best = best_runs(runs)
    variants = sorted({v for _, v in best}, key=variant_sort_key)
    header = ["initialization", *(f"{variant_name(v)}: AP box / AP mask (schedule)" for v in variants)]
    rows = []
    for init in sorted({i for i, _ in best}, key=init_sort_key):
        cells = [init_name(init)]
        for v in variants:
            r = best.get((init, v))
            cells.append("–" if r is None else
                         f"{_fmt(_ap(r, 'bbox'))} / {_fmt(_ap(r, 'segm'))} ({r.epochs:g} ep)")
        rows.append(cells)
    return header, rows


def run_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "init", "model", "schedule (ep)", "best at (ep)", *(f"{k} box" for k in AP_KEYS),
              "AP mask", "AP50 mask", "AP75 mask"]
    rows = []
    for r in sorted(runs, key=lambda r: (init_sort_key(r.init), variant_sort_key(r.variant), r.epochs)):
        rows.append([
            r.name, init_name(r.init), variant_name(r.variant), f"{r.epochs:g}",
            "–" if r.best is None else f"{r.best.epoch:.1f}",
            *(_fmt(_ap(r, "bbox", k)) for k in AP_KEYS),
            *(_fmt(_ap(r, "segm", k)) for k in ("AP", "AP50", "AP75")),
        ])
    return header, rows


def rescore_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """One row per ``vitinit eval`` of each run (``RUN/eval/<name>/metrics.json`` of kind ``rescore``)."""
    header = ["run", "evaluation", "iter", "images", "AP box", "AP50 box", "AP75 box", "AP mask"]
    rows = []
    for r in runs:
        for f in sorted(r.path.glob("eval/*/metrics.json")):
            d = read_json(f, error=RunFolderError, what="evaluation")
            if d.get("kind") == "rescore":
                box = [_fmt(d["bbox"].get(k)) for k in ("AP", "AP50", "AP75")]
                rows.append([r.name, f.parent.name, str(d.get("iter", "–")), str(d.get("images", "–")),
                             *box, _fmt(d["segm"].get("AP"))])
    return header, rows


def complexity_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]] | None:
    """The paper's complexity table: parameters and FLOPs (``analysis/complexity.json``) beside best AP."""
    found = {r.name: c for r in runs if (c := _complexity(r)) is not None}
    if not found:
        return None
    header = ["run", "model", "params (M)", "GFLOPs", "at", "RoIs box / mask", "box AP", "mask AP",
              "schedule (ep)"]
    rows = []
    for r in sorted(runs, key=lambda r: (variant_sort_key(r.variant), init_sort_key(r.init), r.epochs)):
        c = found.get(r.name)
        rows.append([
            r.name, f"{variant_name(r.variant)} ({init_name(r.init)})",
            "–" if c is None else f"{c['params']['total'] / 1e6:.1f}",
            "–" if c is None else f"{c['flops']['total'] / 1e9:.0f}",
            "–" if c is None else f"{c['size']}²",
            "–" if c is None else f"{c['proposals']} / {c['detections']}",
            _fmt(_ap(r, "bbox")), _fmt(_ap(r, "segm")), f"{r.epochs:g}",
        ])
    return header, rows


def _complexity(run: Run) -> dict | None:
    path = run.path / COMPLEXITY_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path, error=RunFolderError, what="complexity figures")
    except RunFolderError as e:
        logger.warning("%s", e)
        return None


def error_entries(runs: Sequence[Run]) -> list[tuple[str, str, dict]]:
    """``(init, label, tide)`` for the best run of each (init, variant) that has an error analysis."""
    entries = []
    for (init, variant), r in sorted(best_runs(runs).items(),
                                     key=lambda kv: (variant_sort_key(kv[0][1]), init_sort_key(kv[0][0]))):
        if r.tide is not None:
            entries.append((init, f"{init_name(init)} {variant_name(variant)} ({r.epochs:g} ep)", r.tide))
    return entries


def error_rows(entries: Sequence[tuple[str, str, dict]]) -> tuple[list[str], list[list[str]]]:
    header = ["initialization", "kind", "AP50", *(ERROR_LABELS[e] for e in ERROR_TYPES)]
    rows = []
    for _, label, tide in entries:
        for metric, kind in (("bbox", "box"), ("segm", "mask")):
            res = tide.get(metric)
            if res:
                deltas = (_fmt(res["delta_ap"][e]) for e in ERROR_TYPES)
                rows.append([label, kind, _fmt(res["ap50"]), *deltas])
    return header, rows


def _load(paths: Sequence[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    runs, skipped = [], []
    for p in paths:
        run = load_run(p)
        if not run.finished:
            logger.warning("skipping %s: not finished (status: %s)", p, run.status)
            skipped.append((p, f"not finished (status: {run.status})"))
        elif run.best is None:
            logger.warning("skipping %s: finished but has no evaluation", p)
            skipped.append((p, "finished but has no evaluation"))
        else:
            runs.append(run)
    return runs, skipped


def _analyze_missing(runs: list[Run], notes: list[str]) -> None:
    """Fill in the error analysis of the runs that lack one; the report still works without tidecv."""
    for i, r in enumerate(runs):
        if r.tide is not None:
            continue
        try:
            analyze_run(r.path)
        except MissingDependencyError as e:
            notes.append(f"No error analysis: {e}.")
            return
        except VitinitError as e:
            notes.append(f"No error analysis for {r.name}: {e}.")
            continue
        runs[i] = load_run(r.path)


def render_markdown(report: Report, figures: dict[str, Path]) -> str:
    lines = ["# vitinit report", ""]
    lines.append(f"{len(report.runs)} finished run(s). AP is COCO AP in percent; each run is scored at its "
                 "best evaluation, and each table cell shows the best run of that initialization and size.")
    lines.append("")
    lines += ["## Box AP / mask AP per initialization", "", *_table(*comparison_rows(report.runs)), ""]
    if "schedule" in figures:
        lines += ["## AP vs. schedule length", "", f"![AP vs schedule]({figures['schedule'].name})", ""]
    lines += ["## Runs", "", *_table(*run_rows(report.runs)), ""]
    if "training" in figures:
        lines += [f"![AP during training]({figures['training'].name})", ""]
    rescored = rescore_rows(report.runs)
    if rescored[1]:
        lines += ["## Evaluations with `vitinit eval`", "",
                  "A trained model scored again after its run (e.g. on the whole val set when the run "
                  "evaluated `eval.max_images`), in `RUN/eval/<evaluation>/`.", "", *_table(*rescored), ""]
    complexity = complexity_rows(report.runs)
    if complexity:
        lines += ["## Model complexity", "", "Parameters and inference FLOPs of each run's detector (torch "
                  "`FlopCounterMode`, multiply-add = 2; the box head on the test-time maximum of proposals, "
                  "the mask head on that of detections), beside its best AP. `vitinit model-info` adds "
                  "measured images/s.", "",
                  *_table(*complexity), ""]
    entries = error_entries(report.runs)
    lines += ["## Error analysis (TIDE ΔAP@0.5)", ""]
    if entries:
        lines += ["AP gained at IoU 0.5 by fixing each kind of error (higher = more of that error).", "",
                  *_table(*error_rows(entries)), ""]
        if "errors" in figures:
            lines += [f"![Error analysis]({figures['errors'].name})", ""]
    else:
        lines += ["None of the runs has an error analysis.", *(n for n in report.notes if "tidecv" in n), ""]
    if report.pictures:
        lines += ["## Predictions on fixed val images", "",
                  f"Ground truth (left) and detections with score ≥ {gallery.SCORE_THRESH:g} (right) at the "
                  "run's last evaluation; the same images for every run on this val set.", ""]
        for name, pics in report.pictures.items():
            lines += [f"### {name}", "", *(f"![{p.stem}]({p.relative_to(report.out_dir)})" for p in pics), ""]
    if report.skipped or report.notes:
        lines += ["## Left out", ""]
        lines += [f"- `{p}`: {why}" for p, why in report.skipped]
        lines += [f"- {n}" for n in report.notes]
        lines.append("")
    return "\n".join(lines)


def _write_galleries(report: Report, image_dir: Path | None, n: int) -> None:
    """Each run's gallery under ``out/gallery[/RUN]``; a run whose images cannot be found gets a note."""
    single = len(report.runs) == 1
    for r in report.runs:
        if r.val_annotations is None or r.eval_dir is None:
            report.notes.append(f"No gallery for {r.name}: its results name no detections.")
            continue
        out = report.out_dir / "gallery" / ("" if single else r.name)
        try:
            report.pictures[r.name] = gallery.write_gallery(
                r.val_annotations, r.eval_dir, out, image_dir=image_dir, n=n
            )
        except VitinitError as e:
            report.notes.append(f"No gallery for {r.name}: {e}.")


def build_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    analyze: bool = True,
    pictures: int = gallery.NUM_IMAGES,
    image_dir: str | Path | None = None,
) -> Report:
    """Read runs, write ``report.md`` and its PNG figures into ``out_dir``.

    Args:
        run_dirs: run folders, or folders of run folders.
        out_dir: where the report goes (created; files of a previous report there are replaced).
        analyze: compute the TIDE error analysis of runs that lack one (needs ``vitinit[tide]``).
        pictures: val images in each run's gallery (0: none).
        image_dir: the val images' folder; by default found beside the annotations (COCO's layout).

    Raises:
        RunFolderError: a path is not a run, or no finished run is left.

    Example:
        >>> build_report(["runs/mae_b_25ep", "runs/beit_b_25ep"], "report").files  # doctest: +SKIP
    """
    runs, skipped = _load(expand_run_dirs(run_dirs))
    if not runs:
        raise RunFolderError(f"no finished run to report ({len(skipped)} skipped: {skipped[0][1]})")
    out = Path(out_dir)
    report = Report(out_dir=out, runs=runs, skipped=skipped)
    if analyze:
        _analyze_missing(report.runs, report.notes)

    figures = {"schedule": plots.plot_ap_vs_schedule(report.runs, out / "ap_vs_schedule.png")}
    if any(r.curve for r in report.runs):
        figures["training"] = plots.plot_training_curves(report.runs, out / "ap_during_training.png")
    entries = error_entries(report.runs)
    if entries:
        figures["errors"] = plots.plot_error_bars(entries, out / "errors.png")
    if pictures:
        _write_galleries(report, Path(image_dir) if image_dir is not None else None, pictures)
    report.markdown = render_markdown(report, figures)
    with atomic_path(out / REPORT_FILE) as tmp:
        tmp.write_text(report.markdown)
    report.files = [out / REPORT_FILE, *figures.values(), *(p for ps in report.pictures.values() for p in ps)]
    return report
