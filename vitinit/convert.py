"""The one conversion call: checkpoint → detection backbone file (used by the CLI, trainer, benchmarks).

read (``vitinit.formats``) → normalize (``vitinit.normalize``) → write (``vitinit.targets``). Options are
checked and the output path is claimed before any heavy work, and outputs are written atomically, so a
failure leaves neither a partial output nor a changed source.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vitinit.canonical import Checkpoint, ViTSpec
from vitinit.errors import ConfigError
from vitinit.formats import FAMILIES, read_checkpoint, source_sha256
from vitinit.io.load import WEIGHT_FILE_NAMES
from vitinit.io.save import check_output_path
from vitinit.modeling.vit import ViTBackboneConfig
from vitinit.normalize.detection import (
    LAYER_SCALE_MODES,
    REL_POS_MODES,
    REL_POS_RESIZE,
    detection_config,
    to_vitdet,
)
from vitinit.normalize.patch_size import resample_patch_size
from vitinit.targets import TARGETS


@dataclass
class ConvertResult:
    path: Path
    sha256: str
    provenance: dict
    family: str
    target: str
    spec: ViTSpec
    config: ViTBackboneConfig | None = None  # the vitdet backbone config (None for detectron2)
    pth_path: Path | None = None
    pth_sha256: str | None = None
    actions: list[str] = field(default_factory=list)  # human-readable summary of what was done


def default_output_name(family: str, spec: ViTSpec, target: str, size: int) -> str:
    """E.g. ``beit-vitb-vitdet-1024.safetensors``; custom sizes read ``custom-w32d2``."""
    model = spec.variant.replace("-", "") if spec.variant else f"custom-w{spec.embed_dim}d{spec.depth}"
    ext = ".safetensors" if target == "vitdet" else ".pth"
    return f"{family}-{model}-{target}-{size}{ext}"


def _check_options(family: str, target: str, layer_scale: str, rel_pos: str, rel_pos_resize: str) -> None:
    for value, allowed, name in (
        (family, FAMILIES, "--from"),
        (target, TARGETS, "--to"),
        (layer_scale, LAYER_SCALE_MODES, "--layer-scale"),
        (rel_pos, REL_POS_MODES, "--rel-pos"),
        (rel_pos_resize, REL_POS_RESIZE, "--rel-pos-resize"),
    ):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def load_source(
    source: str | Path | None,
    *,
    family: str = "auto",
    model: str | None = None,
    num_heads: int | None = None,
    seed: int = 0,
    hash_source: bool = True,
) -> Checkpoint:
    """Resolve ``source`` (local path, ``hf://``/``https://`` or None = the official release) and read it."""
    if family != "random" and (source is None or "://" in str(source)):
        from vitinit.io.remote import resolve_source  # lazy: network machinery only when needed

        source = resolve_source(source, family=family, model=model or "vit-b")
    return read_checkpoint(
        source, family=family, model=model, num_heads=num_heads, seed=seed, hash_source=hash_source
    )


def convert(
    source: str | Path | None,
    *,
    family: str = "auto",
    target: str = "vitdet",
    size: int = 1024,
    model: str | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    layer_scale: str = "keep",
    rel_pos: str = "shared",
    rel_pos_resize: str = "geometric",
    window_size: int = 14,
    num_heads: int | None = None,
    pth: bool = False,
    drop_rel_pos: bool = False,
    seed: int = 0,
    progress: bool = False,
    patch_size: int | None = None,
) -> ConvertResult:
    """Convert one checkpoint; returns where it went, its sha256 and the provenance stored with it.

    Example:
        >>> r = convert("mae_pretrain_vit_base.pth", target="vitdet", size=1024)  # doctest: +SKIP
        >>> r.path, r.sha256  # doctest: +SKIP
    """
    _check_options(family, target, layer_scale, rel_pos, rel_pos_resize)
    if output is not None:  # claim the path before reading a multi-GB source
        check_output_path(output, overwrite=overwrite)
    # The source is hashed by a second thread while the vitdet target streams its output (the hash only
    # lands in the header, rewritten at the end); the detectron2 target needs it before writing.
    hash_later = target == "vitdet" and family != "random"
    ckpt = load_source(
        source, family=family, model=model, num_heads=num_heads, seed=seed, hash_source=not hash_later
    )
    if patch_size:  # e.g. DINOv2 / MAE ViT-H 14 -> 16 (normalize.patch_size; lossy, so only on request)
        ckpt = resample_patch_size(ckpt, patch_size)
    fam = ckpt.provenance.family
    out = Path(output) if output is not None else Path(default_output_name(fam, ckpt.spec, target, size))
    check_output_path(out, overwrite=overwrite)
    pth_out = out.with_suffix(".pth") if pth and target == "vitdet" else None
    if pth_out is not None:
        if pth_out == out:
            raise ConfigError(f"--pth needs an output name not ending in .pth, got {out}")
        check_output_path(pth_out, overwrite=overwrite)
    _refuse_writing_over_source(ckpt, [out, pth_out])

    if target == "vitdet":
        from vitinit.targets.vitdet import write_vitdet, write_vitdet_pth

        config = detection_config(
            ckpt.spec, img_size=size, window_size=window_size, rel_pos=rel_pos, layer_scale=layer_scale
        )
        tensors, prov = to_vitdet(
            ckpt, config, layer_scale=layer_scale, rel_pos_resize=rel_pos_resize, seed=seed
        )
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitinit-source-sha256") as pool:
            source_hash = pool.submit(source_sha256, ckpt.provenance.source) if hash_later else None
            try:
                sha = write_vitdet(
                    out, config, tensors, prov, overwrite=overwrite, progress=progress,
                    source_sha256=source_hash.result if source_hash else None,
                )
            finally:
                if source_hash is not None:
                    source_hash.cancel()
        result = ConvertResult(out, sha, prov.to_dict(), fam, target, ckpt.spec, config=config)
        if pth_out is not None:
            result.pth_path, result.pth_sha256 = pth_out, write_vitdet_pth(pth_out, out, overwrite=overwrite)
    else:
        from vitinit.targets.detectron2 import to_detectron2, write_detectron2

        tensors, prov = to_detectron2(
            ckpt, img_size=size, window_size=window_size, drop_rel_pos=drop_rel_pos, seed=seed
        )
        sha = write_detectron2(out, tensors, prov, overwrite=overwrite)
        result = ConvertResult(out, sha, prov.to_dict(), fam, target, ckpt.spec)
    result.actions = summarize(result.provenance)
    return result


def _refuse_writing_over_source(ckpt: Checkpoint, outputs: list[Path | None]) -> None:
    """Sources are never changed, ``--overwrite`` or not (``x.pth --pth`` would otherwise replace x.pth)."""
    if ckpt.provenance.source is None:
        return
    src = Path(ckpt.provenance.source).resolve()
    protected = {src, *(src / name for name in WEIGHT_FILE_NAMES)} if src.is_dir() else {src}
    for out in outputs:
        if out is not None and out.resolve() in protected:
            raise ConfigError(f"output {out} is the source checkpoint; choose another output path")


def summarize(provenance: dict) -> list[str]:
    """One line per thing the conversion did, for the CLI's table."""
    lines = [f"read {provenance['format']} ({provenance['family']})"]
    lines += [f"dropped {k}: {why}" for k, why in provenance.get("dropped", {}).items()]
    norm = provenance.get("normalization", {})
    for key in ("abs_pos", "rel_pos", "rel_pos_rule", "layer_scale"):
        if key in norm:
            lines.append(f"{key.replace('_', ' ')}: {norm[key]}")
    return lines
