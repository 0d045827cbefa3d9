"""The one conversion pipeline: source → reader → canonical → normalize(target options) → target.

``normalize_source`` is the pipeline up to the target's tensors (lazy, in memory): the bench calls it and
loads the tensors; ``convert`` calls it and writes them with the target's writer. Reader: ``vitinit.formats``;
options: :class:`~vitinit.normalize.options.NormalizeOptions`; targets: ``vitinit.targets.TARGETS``.
Options are checked and the output path is claimed before any heavy work, and outputs are written
atomically, so a failure leaves neither a partial output nor a changed source.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vitinit.canonical import Checkpoint, ViTSpec
from vitinit.errors import ChecksumMismatchError, ConfigError, quote
from vitinit.formats import FAMILIES, read_checkpoint, source_sha256, source_weights_file
from vitinit.io import hash_cache
from vitinit.io.load import WEIGHT_FILE_NAMES
from vitinit.io.save import check_output_path
from vitinit.modeling.vit import ViTBackboneConfig
from vitinit.normalize.options import (
    ABS_POS_MODES,
    LAYER_SCALE_MODES,
    REL_POS_MODES,
    REL_POS_RESIZE,
    Normalized,
    NormalizeOptions,
)
from vitinit.normalize.patch_size import resample_patch_size
from vitinit.targets import TARGETS
from vitinit.targets.vitdet import write_vitdet_pth


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
    return f"{family}-{model}-{target}-{size}{TARGETS[target].suffix}"


def _check_options(family: str, target: str, **modes: str) -> None:
    """CLI-named one-line errors (``--rel-pos must be one of ...``) before any file is opened."""
    allowed_modes = {
        "layer_scale": LAYER_SCALE_MODES, "rel_pos": REL_POS_MODES, "rel_pos_resize": REL_POS_RESIZE,
        "abs_pos": ABS_POS_MODES,
    }
    checks = [(family, FAMILIES, "--from"), (target, tuple(TARGETS), "--to")]
    checks += [(v, allowed_modes[k], "--" + k.replace("_", "-")) for k, v in modes.items()]
    for value, allowed, name in checks:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def local_source(
    source: str | Path | None, *, family: str, model: str | None, progress: bool = False
) -> str | Path | None:
    """``source`` as a local path: downloaded first when remote or omitted (None only for random)."""
    if family != "random" and (source is None or "://" in str(source)):
        from vitinit.io.remote import resolve_source  # lazy: network machinery only when needed

        return resolve_source(source, family=family, model=model or "vit-b", progress=progress)
    return source


def load_source(
    source: str | Path | None,
    *,
    family: str = "auto",
    model: str | None = None,
    num_heads: int | None = None,
    seed: int = 0,
    hash_source: bool = True,
    progress: bool = False,
) -> Checkpoint:
    """Resolve ``source`` (local path, ``hf://``/``https://`` or None = the official release) and read it."""
    source = local_source(source, family=family, model=model, progress=progress)
    return read_checkpoint(
        source, family=family, model=model, num_heads=num_heads, seed=seed, hash_source=hash_source
    )


def normalize_source(
    source: str | Path | None,
    *,
    family: str = "auto",
    target: str = "vitdet",
    options: NormalizeOptions | None = None,
    model: str | None = None,
    num_heads: int | None = None,
    hash_source: bool = True,
    progress: bool = False,
) -> Normalized:
    """The pipeline without the file: ``target``'s tensors (lazy) for ``source`` under ``options``.

    The random init is drawn with ``options.seed``. Example:
        >>> n = normalize_source("mae_pretrain_vit_base.pth", options=NormalizeOptions())  # doctest: +SKIP
        >>> state = n.state_dict()  # doctest: +SKIP
    """
    options = options or NormalizeOptions()
    if target not in TARGETS:
        raise ConfigError(f"--to must be one of {', '.join(TARGETS)}, got {target!r}")
    ckpt = load_source(
        source, family=family, model=model, num_heads=num_heads, seed=options.seed, hash_source=hash_source,
        progress=progress,
    )
    # Canonical → canonical steps that change the architecture go here, before the target's layout, so
    # that every target gets them: patch-embedding resampling (e.g. DINOv2 / MAE ViT-H 14 -> 16; lossy, so
    # only on request).
    if options.patch_size and options.patch_size != ckpt.spec.patch_size:
        ckpt = resample_patch_size(ckpt, options.patch_size)
    return TARGETS[target].normalize(ckpt, options)


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
    rel_pos: str = "auto",
    rel_pos_resize: str = "geometric",
    abs_pos: str = "auto",
    window_size: int = 14,
    num_heads: int | None = None,
    pth: bool = False,
    drop_rel_pos: bool = False,
    seed: int = 0,
    progress: bool = False,
    patch_size: int | None = None,
    expected_sha256: str | None = None,
) -> ConvertResult:
    """Convert one checkpoint; returns where it went, its sha256 and the provenance stored with it.

    The defaults preserve the source's function (:mod:`vitinit.normalize.options`). ``expected_sha256``
    is the source's published sha256 (the weights file's, for a folder): the output is written with it in
    its header from the first byte while the source is hashed alongside, and a source with another hash
    is a :class:`~vitinit.errors.ChecksumMismatchError` with no output left. Example:
        >>> r = convert("mae_pretrain_vit_base.pth", target="vitdet", size=1024)  # doctest: +SKIP
        >>> r.path, r.sha256  # doctest: +SKIP
    """
    _check_options(
        family, target, layer_scale=layer_scale, rel_pos=rel_pos, rel_pos_resize=rel_pos_resize,
        abs_pos=abs_pos,
    )
    options = NormalizeOptions(
        img_size=size, window_size=window_size, abs_pos=abs_pos, rel_pos=rel_pos,
        rel_pos_resize=rel_pos_resize, layer_scale=layer_scale, drop_rel_pos=drop_rel_pos,
        patch_size=patch_size, seed=seed,
    )
    expected = _check_expected_sha256(expected_sha256, family)
    if output is not None:  # claim the path before reading a multi-GB source
        check_output_path(output, overwrite=overwrite)
    writer = TARGETS[target]
    # A streaming target's source is hashed by a second thread from the moment its local path is known,
    # while it is parsed and the output written; the others need it before writing. Its hash goes into
    # the output's header, which the output's own sha256 reads first, so the two hashes follow each other
    # (the conversion's floor, two sha256 passes: benchmarks/convert.py) unless the source's hash is
    # known at once: hashed before or downloaded by vitinit (vitinit.io.hash_cache), or given by the user
    # (``expected_sha256``, checked against the source as it is hashed). Then the output is written with
    # its final header and hashed from memory as written, and the work is about one pass.
    hash_later = writer.streams and family != "random"
    source = local_source(source, family=family, model=model, progress=progress)
    known = hash_cache.lookup(source_weights_file(source)) if source and hash_later else None
    if known is not None:
        _check_source_sha256(source, known, expected)
        hash_later = False
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitinit-source-sha256") as pool:
        source_hash = pool.submit(source_sha256, source, cancel=stop) if hash_later and source else None
        try:
            normalized = normalize_source(
                source, family=family, target=target, options=options, model=model, num_heads=num_heads,
                hash_source=not hash_later,
            )
            out, pth_out = _claim_outputs(normalized, output, target, size, pth=pth, overwrite=overwrite)
            late_hash, before_publish = None, None
            if source_hash is None:  # hashed already (read_checkpoint or the cache)
                _check_source_sha256(source, normalized.provenance.sha256, expected)
            elif expected is None:  # the header waits for the hash
                late_hash = source_hash.result
            else:  # the header says the expected hash at once; the file appears only if it is right
                normalized.provenance.sha256 = expected

                def before_publish() -> None:
                    _check_source_sha256(source, source_hash.result(), expected)

            sha = writer.write(
                out, normalized, overwrite=overwrite, progress=progress, source_sha256=late_hash,
                before_publish=before_publish,
            )
        finally:
            stop.set()  # an error before the hash was used: stop reading the source at once
    prov, spec = normalized.provenance, normalized.spec
    result = ConvertResult(
        out, sha, normalized.provenance.to_dict(), prov.family, target, spec, config=normalized.config
    )
    if pth_out is not None:
        try:
            result.pth_sha256 = write_vitdet_pth(pth_out, out, overwrite=overwrite)
        except BaseException:  # both files or neither: a failed .pth copy takes the .safetensors along
            out.unlink(missing_ok=True)
            raise
        result.pth_path = pth_out
    result.actions = summarize(result.provenance)
    return result


def _check_expected_sha256(value: str | None, family: str) -> str | None:
    """``--expect-sha256`` as 64 lowercase hex digits, checked before any file is opened."""
    if value is None:
        return None
    if family == "random":
        raise ConfigError("--expect-sha256 is the sha256 of a source checkpoint; --from random has none")
    digest = value.strip().lower()
    if not hash_cache.SHA256_HEX.fullmatch(digest):
        raise ConfigError(f"--expect-sha256 must be a sha256 digest (64 hex digits), got {quote(value)}")
    return digest


def _check_source_sha256(source: str | Path | None, actual: str | None, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise ChecksumMismatchError(
            f"{source_weights_file(source)}: sha256 is {actual}, not the expected {expected}; "
            "nothing was written"
        )


def _claim_outputs(
    normalized: Normalized, output: str | Path | None, target: str, size: int, *, pth: bool, overwrite: bool
) -> tuple[Path, Path | None]:
    """The output path (and the ``.pth`` copy's), checked free and distinct from the source."""
    prov = normalized.provenance
    out = Path(output) if output is not None else Path(default_output_name(prov.family, normalized.spec,
                                                                           target, size))
    check_output_path(out, overwrite=overwrite)
    pth_out = out.with_suffix(".pth") if pth and target == "vitdet" else None
    if pth_out is not None:
        if pth_out == out:
            raise ConfigError(f"--pth needs an output name not ending in .pth, got {out}")
        check_output_path(pth_out, overwrite=overwrite)
    _refuse_writing_over_source(prov.source, [out, pth_out])
    return out, pth_out


def _refuse_writing_over_source(source: str | None, outputs: list[Path | None]) -> None:
    """Sources are never changed, ``--overwrite`` or not (``x.pth --pth`` would otherwise replace x.pth)."""
    if source is None:
        return
    src = Path(source).resolve()
    protected = {src, *(src / name for name in WEIGHT_FILE_NAMES)} if src.is_dir() else {src}
    for out in outputs:
        if out is not None and out.resolve() in protected:
            raise ConfigError(f"output {out} is the source checkpoint; choose another output path")


def summarize(provenance: dict) -> list[str]:
    """One line per thing the conversion did, for the CLI's table."""
    lines = [f"read {provenance['format']} ({provenance['family']})"]
    lines += [f"dropped {k}: {why}" for k, why in provenance.get("dropped", {}).items()]
    norm = provenance.get("normalization", {})
    for key in ("abs_pos", "rel_pos", "rel_pos_rule", "rope", "layer_scale"):
        if key in norm:
            lines.append(f"{key.replace('_', ' ')}: {norm[key]}")
    if provenance.get("input_norm"):
        n = provenance["input_norm"]
        lines.append(f"input mean/std recorded: {n['mean']} / {n['std']} ({n['from']})")
    return lines
