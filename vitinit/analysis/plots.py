"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state).

- :func:`plot_ap_vs_schedule`: the paper's figure, AP against fine-tuning schedule length, one line per
  initialization, one column per model size, box AP on top and mask AP below.
- :func:`plot_training_curves`: AP at each evaluation during training, one line per run.
- :func:`plot_error_bars`: the TIDE ΔAP@0.5 of each error type, one bar per initialization.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from vitinit.analysis.runs import Run
from vitinit.analysis.tide import ERROR_TYPES
from vitinit.families import DISPLAY_NAMES, FAMILIES
from vitinit.io.save import atomic_path

# The paper's order of initializations, then the newer ones; one fixed colour each so every figure agrees.
INIT_ORDER = FAMILIES
INIT_NAMES = DISPLAY_NAMES
INIT_COLORS = {
    "random": "#7f7f7f", "supervised": "#1f77b4", "mocov3": "#ff7f0e", "beit": "#2ca02c", "mae": "#d62728",
    "dinov2": "#9467bd", "beitv2": "#17becf", "data2vec": "#8c564b",
}
_EXTRA_COLORS = ("#e377c2", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a")
VARIANT_ORDER = ("r-101", "vit-s", "vit-b", "vit-l", "vit-h")  # the CNN baseline first, as the paper's table
# The paper's short names for TIDE's error types, for the bar chart's axis.
ERROR_SHORT = {"cls": "cls", "loc": "loc", "both": "cls+loc", "dupe": "dup", "bkg": "bg", "miss": "miss"}
DPI = 120


def init_name(init: str) -> str:
    return INIT_NAMES.get(init, init)


def variant_name(variant: str) -> str:
    if variant.startswith(("vit-", "r-")):
        head, _, size = variant.partition("-")
        return ("ViT-" if head == "vit" else "R-") + size.upper()
    return variant


def init_sort_key(init: str) -> tuple[int, str]:
    return (INIT_ORDER.index(init) if init in INIT_ORDER else len(INIT_ORDER), init)


def variant_sort_key(variant: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER), variant)


def _color(init: str, extra: dict[str, str]) -> str:
    if init in INIT_COLORS:
        return INIT_COLORS[init]
    return extra.setdefault(init, _EXTRA_COLORS[len(extra) % len(_EXTRA_COLORS)])


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _default_style(fn):
    """Draw in matplotlib's default style: tidecv imports seaborn, which restyles matplotlib globally."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.style.context("default"):
            return fn(*args, **kwargs)

    return wrapper


@_default_style
def plot_ap_vs_schedule(runs: Sequence[Run], path: str | Path) -> Path:
    """AP against schedule length (epochs): one point per run at its best evaluation, a line per init."""
    variants = sorted({r.variant for r in runs}, key=variant_sort_key)
    fig = Figure(figsize=(4.2 * len(variants) + 1.6, 6.4), layout="constrained")
    axes = fig.subplots(2, len(variants), squeeze=False, sharex=True)
    extra: dict[str, str] = {}
    epochs_seen = sorted({r.epochs for r in runs})
    for col, variant in enumerate(variants):
        by_init: dict[str, list[Run]] = defaultdict(list)
        for r in runs:
            if r.variant == variant and r.best is not None:
                by_init[r.init].append(r)
        for row, (metric, label) in enumerate((("bbox", "box AP"), ("segm", "mask AP"))):
            ax = axes[row][col]
            for init in sorted(by_init, key=init_sort_key):
                pts = sorted((r.epochs, getattr(r.best, metric).get("AP")) for r in by_init[init])
                pts = [(e, ap) for e, ap in pts if ap is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", lw=2, color=_color(init, extra), label=init_name(init))
                ax.annotate(f"{ys[-1]:.1f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(6, -3),
                            fontsize=8, color=_color(init, extra))
            ax.set_xscale("log", base=2)  # the paper's schedules double: 25, 50, 100, 200, 400 epochs
            ax.xaxis.set_major_locator(FixedLocator(epochs_seen))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{e:g}" for e in epochs_seen])
            ax.grid(True, alpha=0.3)
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(variant_name(variant))
            else:
                ax.set_xlabel("fine-tuning epochs")
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
            labels[lab] = lab
    fig.legend(list(handles.values()), list(labels), loc="outside right center", title="initialization")
    fig.suptitle("COCO AP vs. schedule length (best evaluation of each run)")
    return _save(fig, Path(path))


@_default_style
def plot_training_curves(runs: Sequence[Run], path: str | Path) -> Path:
    """AP at every evaluation of each run, box and mask side by side."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    extra: dict[str, str] = {}
    styles = ("-", "--", ":", "-.")
    seen: dict[str, int] = defaultdict(int)
    for r in sorted(runs, key=lambda r: (init_sort_key(r.init), variant_sort_key(r.variant), r.epochs)):
        if not r.curve:
            continue
        style = styles[seen[r.init] % len(styles)]  # runs of one init share a colour, differ in line style
        seen[r.init] += 1
        for ax, metric in zip(axes, ("bbox", "segm"), strict=True):
            pts = [(p.epoch, p_ap) for p in r.curve if (p_ap := getattr(p, metric).get("AP")) is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, marker=".", color=_color(r.init, extra), label=r.name)
    for ax, label in zip(axes, ("box AP", "mask AP"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    h, lab = axes[0].get_legend_handles_labels()
    if h:
        fig.legend(h, lab, loc="outside right center", title="run", fontsize=8)
    fig.suptitle("AP during training")
    return _save(fig, Path(path))


@_default_style
def plot_error_bars(entries: Sequence[tuple[str, str, dict]], path: str | Path) -> Path:
    """Grouped bars of ΔAP@0.5 per error type; ``entries`` are ``(init, label, tide_json)``.

    Bars take their init's colour; a second entry of the same init (another model size) is hatched.
    """
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False, sharey=True)[0]
    extra: dict[str, str] = {}
    keys = list(ERROR_TYPES)
    width = 0.8 / max(len(entries), 1)
    hatches = ("", "//", "..", "xx")
    for ax, (metric, title) in zip(axes, (("bbox", "box"), ("segm", "mask")), strict=True):
        seen: dict[str, int] = defaultdict(int)
        for k, (init, label, tide) in enumerate(entries):
            hatch = hatches[seen[init] % len(hatches)]
            seen[init] += 1
            values = (tide.get(metric) or {}).get("delta_ap")
            if not values:
                continue
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(keys))]
            bars = ax.bar(xs, [values[e] for e in keys], width, color=_color(init, extra), label=label,
                          hatch=hatch, edgecolor="white", linewidth=0.5)
            # Label only visible bars: a row of "0.0" under every group hides the ones that matter.
            ax.bar_label(bars, labels=[f"{v:.1f}" if v >= 0.05 else "" for v in (values[e] for e in keys)],
                         fontsize=7, padding=1, rotation=90 if len(entries) > 3 else 0)
        ax.set_xticks(range(len(keys)), [ERROR_SHORT[e] for e in keys])
        for i in range(1, len(keys)):
            ax.axvline(i - 0.5, color="0.85", lw=0.8)  # separate the error-type groups
        ax.set_title(f"{title} errors")
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_xlim(-0.5, len(keys) - 0.5)
        ax.margins(y=0.12)
    axes[0].set_ylabel("ΔAP@0.5 (AP gained by fixing it)")
    h, lab = axes[0].get_legend_handles_labels()
    if h:
        fig.legend(h, lab, loc="outside right center", title="initialization")
    fig.suptitle("Error analysis (TIDE, IoU 0.5)")
    return _save(fig, Path(path))
