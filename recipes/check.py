"""Checking plain recipe data against :mod:`vitinit.recipes.schema`, and listing its keys.

Every error is one line naming the key, what it accepts and what it got (with a "did you mean" for a typo),
as ``vitinit bench --dry-run`` prints it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from vitinit.recipes.schema import MISSING, Recipe

from vitinit.errors import ConfigError, quote
from vitinit.modeling.vit import ViTBackboneConfig
from vitinit.variants import VIT_SIZE_BOUNDS


class _Mismatch(Exception):
    pass


def _describe(tp: Any, choices: tuple = ()) -> str:
    """A type in words, as the error messages and ``--list-keys`` show it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [_describe(a, choices) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if tp is str and choices:
        return "one of " + ", ".join(map(str, choices))
    if tp in (tuple, list) or origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _describe(tp))


def _check_value(value: Any, tp: Any) -> None:
    """Raise :class:`_Mismatch` unless ``value`` (plain YAML data) has type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(value, a)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _Mismatch
        items = args if origin is tuple and args and args[-1] is not Ellipsis else None
        if items is not None and len(value) != len(items):
            raise _Mismatch
        for i, v in enumerate(value):
            _check_value(v, items[i] if items else (args[0] if args else Any))
        return
    elif tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, tp) if isinstance(tp, type) else True
    if not ok:
        raise _Mismatch


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def _bound(meta: dict) -> str:
    signs = (("min", "≥"), ("above", ">"), ("max", "≤"), ("below", "<"))
    return " and ".join(f"{sign} {meta[k]}" for k, sign in signs if meta[k] is not None)


def _check_field(key: str, value: Any, tp: Any, meta: dict) -> None:
    if value == MISSING:
        raise ConfigError(f"{key} is not set (the recipe must give it; {_describe(tp, meta['choices'])})")
    try:
        _check_value(value, tp)
    except _Mismatch:
        bound = _bound(meta)
        what = _describe(tp, meta["choices"]) + (f" ({bound})" if bound else "")
        raise ConfigError(f"{key} must be {what}, got {quote(value)}") from None
    if typing.get_args(tp) == (str,) and meta["choices"]:  # a list of strings with choices (train.loggers)
        unknown = [v for v in value if v not in meta["choices"]]
        if unknown:
            among = ", ".join(meta["choices"])
            raise ConfigError(f"{key} items must be among {among}, got {quote(unknown[0])}")
    if isinstance(value, str) and meta["choices"] and value not in meta["choices"]:
        hint = difflib.get_close_matches(value, [str(c) for c in meta["choices"]], n=1)
        also = " or a list of integers" if tp is not str else ""
        raise ConfigError(
            f"{key} must be one of {', '.join(map(str, meta['choices']))}{also}, got {value!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    if any(not _representable(v) for v in _numbers(value)):
        raise ConfigError(f"{key} must be a finite number of at most 15 digits, got {quote(value)}")
    bad = [v for v in _numbers(value) if not _in_range(v, meta)]
    if bad:
        raise ConfigError(f"{key} must be {_bound(meta)}, got {quote(value)}")


def _representable(v: float) -> bool:
    """Finite (``1e400`` parses as inf) and exactly representable as a float (``train.seed`` with 32 nines
    would overflow every generator), so the value a run uses is the value the recipe shows."""
    return math.isfinite(v) and abs(v) < 1e15


def _in_range(v: float, meta: dict) -> bool:
    return not (
        (meta["min"] is not None and v < meta["min"])
        or (meta["max"] is not None and v > meta["max"])
        or (meta["above"] is not None and v <= meta["above"])
        or (meta["below"] is not None and v >= meta["below"])
    )


def _unknown(key: str, name: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(name, known, n=1)
    where = f"{key} takes" if key else "a recipe has"
    return ConfigError(
        f"unknown key {key + '.' if key else ''}{name}"
        + (f" (did you mean {hint[0]}?)" if hint else "")
        + f"; {where} {', '.join(known)}"
    )


_NO_BOUNDS = dict(help="", choices=(), min=None, max=None, above=None, below=None, free=None)


def _check_mapping(key: str, tree: Any, cls: type) -> None:
    if not isinstance(tree, dict):
        raise ConfigError(f"{key or 'a recipe'} must be a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    for name in tree:
        if name not in specs:
            raise _unknown(key, str(name), list(specs))
    for name, f in specs.items():
        sub = f"{key}.{name}" if key else name
        if name not in tree:
            raise ConfigError(
                f"the recipe lacks {sub} ({f.metadata['help']}); start it from a bundled recipe "
                "with _base_: mae-vitb.yaml"
            )
        value, tp = tree[name], hints[name]
        if dataclasses.is_dataclass(tp):
            _check_mapping(sub, value, tp)
        elif f.metadata["free"] is not None:
            _check_free(sub, value, f.metadata["free"]())
        else:
            _check_field(sub, value, tp, f.metadata)


def _check_free(key: str, tree: Any, known: dict[str, tuple[Any, Any]]) -> None:
    if tree is None:
        return
    if not isinstance(tree, dict):
        raise ConfigError(f"{key} must be a mapping, got {tree!r}")
    for name, value in tree.items():
        if name not in known:
            raise _unknown(key, str(name), list(known))
        _check_field(f"{key}.{name}", value, known[name][0], _NO_BOUNDS)


def _build(cls: type, tree: dict) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = tree[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            value = _build(hints[f.name], value)
        elif f.metadata["free"] is not None:
            value = dict(value or {})
        kwargs[f.name] = value
    return cls(**kwargs)


def check_recipe(tree: dict) -> None:
    """Raise :class:`ConfigError` (one line, naming the key and what it accepts) unless ``tree`` — a merged,
    resolved recipe as plain data — fits the schema. ``schedule.iters`` may still be null here."""
    _check_mapping("", tree, Recipe)
    recipe = _build(Recipe, tree)
    m, w = recipe.model, recipe.weights
    for name, (lo, hi) in VIT_SIZE_BOUNDS.items():
        value = m.backbone.get(name)
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"model.backbone.{name} must be from {lo} to {hi}, got {quote(value)}")
    if w.init == "random" and not w.source:  # a fresh ViT: model.backbone is its size
        missing = [k for k in ("embed_dim", "depth", "num_heads") if k not in m.backbone]
        if m.variant == "custom" and missing:
            raise ConfigError(f"model.variant=custom needs model.backbone.{missing[0]}")
    else:  # weights bring their size; the pipeline reads only a patch-size resampling and, for a custom
        # size, the head count a state dict cannot tell
        allowed = {"patch_size", "num_heads"} if m.variant == "custom" else {"patch_size"}
        ignored = sorted(set(m.backbone) - allowed)
        if ignored:
            raise ConfigError(
                f"model.backbone.{ignored[0]} would be ignored: {w.init} weights bring their own size "
                f"(with weights, model.backbone takes {' and '.join(sorted(allowed))})"
            )
    # The dataclasses' own checks (five anchor sizes, a known norm ...), on a stand-in backbone.
    try:
        recipe.detector_config(ViTBackboneConfig(), num_classes=1)
    except ConfigError as e:
        raise ConfigError(f"model.detector: {e}") from None
    recipe.synthetic_spec()


def parse_recipe(tree: dict) -> Recipe:
    """The typed view of a resolved recipe (``vitinit.bench.resolve``'s output or a run's ``recipe.yaml``)."""
    check_recipe(tree)
    recipe = _build(Recipe, tree)
    if recipe.schedule.iters is None:
        raise ConfigError("schedule.iters is not derived yet; load recipes with vitinit.recipes.load_recipe")
    return recipe


@dataclass(frozen=True)
class Knob:
    """One line of ``vitinit bench --list-keys``."""

    key: str
    type: str
    value: Any
    help: str


def list_knobs(tree: dict) -> list[Knob]:
    """Every key of the schema, with its type and its value in ``tree`` (a resolved recipe); the open
    sub-trees list every field of their dataclass, with the dataclass default where the recipe sets none."""
    out: list[Knob] = []

    def walk(prefix: str, cls: type, sub: dict) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key, tp, value = f"{prefix}{f.name}", hints[f.name], (sub or {}).get(f.name)
            if dataclasses.is_dataclass(tp):
                walk(key + ".", tp, value)
            elif f.metadata["free"] is not None:
                owner = f.metadata["help"].split("(")[-1].split()[0]  # "... (MaskRCNNConfig fields)"
                for name, (ftp, default) in f.metadata["free"]().items():
                    note = f"{owner} field" + ("" if name in (value or {}) else ", its default")
                    out.append(Knob(f"{key}.{name}", _describe(ftp), (value or {}).get(name, default), note))
            else:
                meta = f.metadata
                bound = _bound(meta)
                out.append(
                    Knob(
                        key,
                        _describe(tp, meta["choices"]) + (f", {bound}" if bound else ""),
                        value,
                        meta["help"],
                    )
                )

    walk("", Recipe, tree)
    return out
