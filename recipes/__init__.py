"""Benchmark recipes: declarative YAML files, shipped inside the package (``vitinit.recipes``).

A recipe names a base with ``_base_: other.yaml`` (or a list of them, merged in order) and overrides what
differs, as detectron2's ViTDet configs derive ViT-L from ViT-B. The command line overrides any key with
dotted ``key=value`` pairs (detectron2 LazyConfig / Hydra convention), parsed by OmegaConf. Files are
plain YAML data, read with ``yaml.safe_load`` underneath; nothing is executed.

Files whose name starts with ``_`` are bases, not runnable recipes.

Example:
    >>> cfg = load_recipe("mae-vitb", ["optim.lr=1e-4", "train.batch_size=16"])
    >>> cfg.weights.init, cfg.schedule.iters
    ('mae', 737500)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from vitinit.recipes.check import check_recipe, parse_recipe
from vitinit.recipes.schema import Recipe

from vitinit.errors import ConfigError, first_line, quote

BASE_KEY = "_base_"
MAX_RECIPE_BYTES = 1 << 20
# OmegaConf resolvers, ${name:args} (oc.env reads the environment, oc.create builds nodes...): a recipe is
# declarative data, so only plain ${key.path} interpolation is allowed.
_RESOLVER = re.compile(r"\$\{[^}]*:")


def refuse_resolvers(tree: Any, where: str) -> None:
    """:class:`ConfigError` when any string in ``tree`` (a recipe as unresolved data, or an override)
    calls a resolver: ``${oc.env:HF_TOKEN}`` in a recipe would put a secret in ``--dry-run``'s output and
    the run folder."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and _RESOLVER.search(node):
            found = _RESOLVER.search(node).group(0)
            raise ConfigError(
                f"{where}: {quote(found + '…')} calls an OmegaConf resolver; recipes are plain data (only "
                "${key} interpolation; the datasets root has data.root and $VITINIT_DATASETS)"
            )


def _package_dir() -> Path:
    return Path(str(resources.files("vitinit.recipes")))


def list_recipes() -> list[str]:
    """Names of the runnable recipes shipped with vitinit, sorted."""
    return sorted(p.stem for p in _package_dir().glob("*.yaml") if not p.name.startswith("_"))


def recipe_path(name: str | Path, *, relative_to: Path | None = None) -> Path:
    """A recipe file from a name (``mae-vitb``), a file name, or a path; bases resolve beside their child."""
    p = Path(name)
    candidates = [p] if p.suffix in (".yaml", ".yml") else [p.with_suffix(".yaml")]
    search = [c for c in candidates if c.is_absolute() or len(c.parts) > 1]
    for folder in (relative_to, _package_dir()):
        if folder is not None:
            search += [folder / c.name for c in candidates]
    for c in search:
        if c.is_file():
            return c
    known = ", ".join(list_recipes())
    raise ConfigError(f"no recipe named {str(name)!r}; bundled recipes: {known}")


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"recipe {path.name} includes itself through _base_")
    if path.is_file() and path.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe {path} is over {MAX_RECIPE_BYTES >> 10} KiB; recipes are short YAML files")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as e:  # yaml errors subclass ValueError-ish types
        raise ConfigError(f"recipe {path} cannot be read: {' '.join(str(e).split())}") from None
    except Exception as e:  # yaml.YAMLError is not a ValueError
        raise ConfigError(f"recipe {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    refuse_resolvers(OmegaConf.to_container(cfg, resolve=False), f"recipe {path.name}")
    bases = cfg.pop(BASE_KEY, None)
    if bases is None:
        return cfg
    if isinstance(bases, str):
        bases = [bases]
    elif not isinstance(bases, ListConfig | list):
        raise ConfigError(f"{path.name}: _base_ must be a file name or a list of them")
    merged = OmegaConf.create({})
    for b in bases:
        merged = OmegaConf.merge(merged, _load_tree(recipe_path(b, relative_to=path.parent), (*seen, path)))
    return OmegaConf.merge(merged, cfg)


def load_recipe(name: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The recipe ``name`` with its bases merged, the ``overrides`` applied, checked and the schedule derived.

    Every key, type and value is checked against :mod:`vitinit.recipes.schema` before anything runs: a typo
    (in any sub-tree), a wrong type or a value out of range is a :class:`ConfigError` naming the key.
    """
    path = recipe_path(name)
    cfg = _load_tree(path)
    cfg.name = path.stem
    _merge_overrides(cfg, overrides)
    check_recipe(_resolved(cfg))
    return derive_schedule(cfg)


def _merge_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {quote(bad[0])}")
    for o in overrides:  # one by one, so that an error names the override it is about
        refuse_resolvers(o, f"override {quote(o)}")
        try:
            cfg.merge_with_dotlist([o])
        except (OmegaConfBaseException, ValueError) as e:  # ValueError: an integer of over 4300 digits
            why = first_line(" ".join(str(e).split()[:12]))
            raise ConfigError(f"bad override {quote(o)}: {why}") from None


# Keys added after runs were already saved, with the value that reproduces what those runs did.
ADDED_KEYS = {
    ("model", "attention"): "auto",
    ("train", "images_per_gpu"): None,
    ("train", "grad_compression"): "none",
    ("eval", "num_workers"): 0,
    ("train", "loggers"): ["tensorboard"],
    ("optim", "optimizer"): "adamw",
    ("optim", "momentum"): 0.9,
    # Older runs evaluated under the training autocast; a resumed run evaluates in float32 as detectron2
    # does (the one key whose old behaviour is not kept: it only changes the reported numbers' precision).
    ("eval", "amp"): "none",
}


def check_saved_recipe(tree: Any, source: str | Path) -> dict[str, Any]:
    """A run's saved ``recipe.yaml`` (plain data) checked against the schema, for ``--resume``; a recipe
    saved before a key existed gets that key's old behaviour (:data:`ADDED_KEYS`)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source} is not a recipe (a mapping at the top level); the run folder is damaged")
    for (section, key), value in ADDED_KEYS.items():
        if isinstance(tree.get(section), dict):
            tree[section].setdefault(key, value)
    try:
        parse_recipe(tree)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return tree


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe {cfg.get('name', '?')}: {' '.join(str(e).split()[:16])}") from None


def derive_schedule(cfg: DictConfig) -> DictConfig:
    """Fill ``schedule.iters`` from ``schedule.epochs`` or the reverse.

    iters = ⌊epochs × data.epoch_images / train.batch_size⌋; on COCO (118,000 images, batch 64) 100 epochs =
    184,375 iterations, exactly the paper's number, and 25 / 50 epochs give MIMDet's 46,093 / 92,187.
    """
    s, images, batch = cfg.schedule, cfg.data.epoch_images, cfg.train.batch_size
    if s.iters is None and s.epochs is None:
        raise ConfigError("the recipe sets neither schedule.epochs nor schedule.iters")
    if s.iters is None:
        s.iters = int(math.floor(s.epochs * images / batch))
    else:
        s.epochs = round(s.iters * batch / images, 4)
    if s.iters < 1:
        raise ConfigError(
            f"schedule.iters must be at least 1, got {s.iters} ({s.epochs} epochs of {images} images at "
            f"batch {batch})"
        )
    return cfg


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved recipe as plain Python data (interpolations evaluated)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe {cfg.get('name', '?')}: {' '.join(str(e).split()[:16])}") from None


def to_yaml(cfg: DictConfig | dict) -> str:
    """The recipe as YAML text (what a run folder's ``recipe.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg) if isinstance(cfg, DictConfig) else cfg))


RecipeLike = str | Path | Recipe | Mapping
"""What the library takes for a recipe: a bundled name, a ``.yaml`` file, a :class:`Recipe`, or the plain
data ``vitinit.bench.resolve`` returns (a run's ``recipe.yaml``)."""


def as_recipe(recipe: RecipeLike, overrides: Sequence[str] = ()) -> Recipe:
    """The typed, checked :class:`Recipe` for any :data:`RecipeLike`, with dotted ``overrides`` applied.

    A :class:`Recipe` without overrides is returned as is: parse once at the edge, then pass the object.
    """
    if isinstance(recipe, Recipe) and not overrides:
        return recipe
    if isinstance(recipe, Recipe | Mapping):
        tree = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
        if not overrides:
            return parse_recipe(tree)
        cfg = OmegaConf.create(tree)
        if any(o.startswith("schedule.epochs=") for o in overrides):  # a new length in epochs: re-derive
            cfg.schedule.iters = None
        _merge_overrides(cfg, overrides)
        check_recipe(_resolved(cfg))
        return parse_recipe(to_plain(derive_schedule(cfg)))
    return parse_recipe(to_plain(load_recipe(recipe, overrides)))
