"""What a folder's config.json claims about the architecture, checked against what the tensors say.

The tensors are the truth for shapes: a config whose width, depth, patch or MLP width contradicts them is
refused (a hub folder with a wrong ``architecture`` or ``hidden_size`` would otherwise convert with the
config's head count, a silently different model). The one thing shapes cannot tell, the head count, is
taken from the config only when it is a plain positive integer that divides the width and agrees with
``--num-heads``. Every value is type- and range-checked first, so a ``true``, a ``-4`` or a ``1e9`` in a
config ends as one line naming the key, never as an allocation or a crash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from vitinit.canonical import TensorMap
from vitinit.errors import CheckpointFormatError, SpecMismatchError, quote
from vitinit.variants import VIT_SIZE_BOUNDS

_BLOCK = re.compile(r"^blocks\.(\d+)\.")

# The sizes' plausible ranges, by this module's names for them.
SIZE_BOUNDS = {name: VIT_SIZE_BOUNDS[key] for name, key in (("width", "embed_dim"), ("depth", "depth"),
               ("patch", "patch_size"), ("heads", "num_heads"), ("mlp", "mlp_hidden_dim"))}


def config_int(cfg: Mapping[str, Any], key: str, *, what: str, bound: str, where: str) -> int | None:
    """``cfg[key]`` as a positive integer within :data:`SIZE_BOUNDS` [``bound``], None when absent.

    A bool, a string, a float or an out-of-range number is a :class:`CheckpointFormatError` naming the key.
    """
    if key not in cfg or cfg[key] is None:
        return None
    value = cfg[key]
    lo, hi = SIZE_BOUNDS[bound]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CheckpointFormatError(
            f"{where}: {key} must be an integer from {lo} to {hi} ({what}), got {quote(value)}"
        )
    return value


def config_number(
    cfg: Mapping[str, Any], key: str, default: float, *, lo: float, hi: float, where: str
) -> float:
    """``cfg[key]`` (``default`` when absent) as a finite number strictly between ``lo`` and ``hi``."""
    value = cfg.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo < value < hi:
        raise CheckpointFormatError(
            f"{where}: {key} must be a number between {lo:g} and {hi:g}, got {quote(value)}"
        )
    return float(value)


def config_eps(cfg: Mapping[str, Any], key: str, default: float, *, where: str) -> float:
    """A layer-norm epsilon: a finite number in (0, 1)."""
    return config_number(cfg, key, default, lo=0, hi=1, where=where)


# transformers config.json keys that state a size the tensors also have: (key, name above, what it is).
HF_SIZE_KEYS = (
    ("hidden_size", "width", "the ViT's width"),
    ("num_hidden_layers", "depth", "the ViT's depth"),
    ("patch_size", "patch", "the patch side"),
    ("intermediate_size", "mlp", "the MLP's width"),
    ("num_attention_heads", "heads", "the head count"),
)


def tensor_sizes(tensors: TensorMap) -> dict[str, int]:
    """Width, depth, patch and MLP width as the canonical tensors have them (what is there)."""
    out: dict[str, int] = {}
    proj = tensors.get("patch_embed.proj.weight")
    if proj is not None and len(proj.shape) == 4:
        out["width"], out["patch"] = proj.shape[0], proj.shape[-1]
    blocks = [int(m.group(1)) for k in tensors if (m := _BLOCK.match(k))]
    if blocks:
        out["depth"] = 1 + max(blocks)
    fc1 = tensors.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        out["mlp"] = fc1.shape[0]
    return out


def check_claims(claimed: Mapping[str, int | None], tensors: TensorMap, *, where: str) -> None:
    """Refuse when a size ``claimed`` by a config (width, depth, patch, mlp) differs from the tensors'."""
    found = tensor_sizes(tensors)
    wrong = [f"{k} {v} (the weights have {found[k]})" for k, v in claimed.items()
             if v is not None and k in found and v != found[k]]
    if wrong:
        raise SpecMismatchError(
            f"{where} contradicts the weights: {', '.join(wrong)}; the weights are the truth for shapes, "
            "so this folder's config is wrong (fix it, or pass the weights file alone)"
        )


def heads_from_config(
    heads: int | None, width: int | None, *, num_heads: int | None, where: str
) -> tuple[int | None, str]:
    """(head count, where it came from): ``--num-heads`` when given, else the config's ``heads``.

    Both given and different, or a config head count that does not divide the width: refused.
    """
    if heads is not None and width is not None and width % heads:
        raise SpecMismatchError(f"{where}: {heads} heads do not divide the weights' width {width}")
    if num_heads is not None:
        if heads is not None and heads != num_heads:
            raise SpecMismatchError(f"--num-heads {num_heads} contradicts {where}, which says {heads} heads")
        return num_heads, "--num-heads"
    return heads, where


def config_sizes(
    cfg: Mapping[str, Any], keys: tuple[tuple[str, str, str], ...], tensors: TensorMap, *, where: str
) -> dict[str, int | None]:
    """The sizes ``cfg`` claims under ``keys`` ((config key, name, what it is), ...), each type- and
    range-checked, the shapes checked against ``tensors`` (the head count is only type-checked here)."""
    claimed = {name: config_int(cfg, key, what=what, bound=name, where=where) for key, name, what in keys}
    check_claims({k: v for k, v in claimed.items() if k != "heads"}, tensors, where=where)
    return claimed


def config_heads(
    cfg: Mapping[str, Any], tensors: TensorMap, *, num_heads: int | None, where: str,
    keys: tuple[tuple[str, str, str], ...] = HF_SIZE_KEYS,
) -> tuple[int | None, str]:
    """(head count, where it came from) of a config whose sizes (``keys``, transformers' by default) must
    agree with ``tensors``: :func:`config_sizes`, then :func:`heads_from_config`."""
    claimed = config_sizes(cfg, keys, tensors, where=where)
    return heads_from_config(
        claimed.get("heads"), tensor_sizes(tensors).get("width"), num_heads=num_heads, where=where
    )
