"""The model card (``README.md``) and ``config.json`` of a converted backbone, from its own metadata.

Everything the card states comes from the ``--to vitdet`` file: the backbone config, the provenance
(source, its sha256, what was dropped, every normalization applied) and the vitinit version that wrote it.
Only metadata is read (``safe_open``), never the tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open

from vitinit.errors import CheckpointFormatError
from vitinit.io.registry import OFFICIAL_CHECKPOINTS
from vitinit.io.save import sha256_file
from vitinit.modeling.vit import ViTBackboneConfig
from vitinit.normalize.detectron2 import inexpressible, listed
from vitinit.targets.vitdet import parse_vitdet_metadata
from vitinit.variants import infer_variant

WEIGHTS_NAME = "model.safetensors"  # the name in the Hub repository, whatever it was called locally

# License of the source weights, as each method's official repository states it (checked in the repos).
LICENSES: dict[str, tuple[str, str]] = {
    "mae": ("cc-by-nc-4.0", "facebookresearch/mae LICENSE: CC BY-NC 4.0"),
    "mocov3": ("cc-by-nc-4.0", "facebookresearch/moco-v3 README: CC-BY-NC 4.0"),
    "beit": ("mit", "microsoft/unilm LICENSE: MIT"),
    # DeiT was relicensed from CC BY-NC 4.0 to Apache 2.0 (the README now says Apache 2.0).
    "supervised": ("apache-2.0", "facebookresearch/deit README: Apache 2.0"),
    "random": ("apache-2.0", "no pre-trained weights: random initialization by vitinit (Apache 2.0)"),
    "dinov2": ("apache-2.0", "facebookresearch/dinov2 README: code and model weights under Apache 2.0"),
    "beitv2": ("mit", "microsoft/unilm LICENSE: MIT"),
    "data2vec": (
        "other",
        "UNCONFIRMED: data2vec's code is MIT (facebookresearch/fairseq); its weights' license is unchecked",
    ),
    # OpenAI's weights come with openai/CLIP's MIT license; open_clip's (mlfoundations/open_clip) are MIT too.
    "clip": ("mit", "openai/CLIP and mlfoundations/open_clip LICENSE: MIT"),
    "siglip": (
        "apache-2.0", "google-research/big_vision LICENSE and the google/siglip* model cards: Apache 2.0"
    ),
    "dinov3": (
        "other",
        "the DINOv3 License (facebookresearch/dinov3 LICENSE.md; timm's and transformers' ports say so), "
        "Meta's own license, not an open-source one",
    ),
    "eva02": ("mit", "baaivision/EVA LICENSE: MIT"),
}
# Weights whose source is gated behind its own license: the card and `vitinit publish` say so, and the Hub
# metadata names the license (license: other + license_name / license_link).
GATED: dict[str, tuple[str, str, str]] = {  # family -> (license_name, license_link, what the user must know)
    "dinov3": (
        "dinov3-license",
        "https://ai.meta.com/resources/models-and-libraries/dinov3-license/",
        "DINOv3's weights are gated: they are downloaded only after accepting Meta's DINOv3 License, and "
        "weights derived from them (this conversion) remain under it. Check its terms before publishing or "
        "using them, and consider a gated or private repository.",
    ),
}
METHODS: dict[str, str] = {
    "mae": "MAE (masked autoencoder, He et al. 2021), self-supervised",
    "beit": "BEiT (masked image modeling, Bao et al. 2021), self-supervised",
    "mocov3": "MoCo v3 (contrastive, Chen et al. 2021), self-supervised",
    "supervised": "supervised ImageNet classification",
    "random": "random initialization (no pre-training)",
    "dinov2": "DINOv2 (self-distillation, Oquab et al. 2023), self-supervised",
    "beitv2": "BEiT v2 (masked image modeling with a vector-quantized visual tokenizer, Peng et al. 2022), "
    "self-supervised",
    "data2vec": "data2vec-vision (masked prediction of contextualized targets, Baevski et al. 2022), "
    "self-supervised",
    "clip": "CLIP (contrastive image-text pre-training, Radford et al. 2021), vision tower; "
    "language-supervised",
    "siglip": "SigLIP / SigLIP 2 (sigmoid-loss image-text pre-training, Zhai et al. 2023; Tschannen et al. "
    "2025), vision tower; language-supervised",
    "dinov3": "DINOv3 (self-distillation with Gram anchoring, Siméoni et al. 2025), self-supervised; RoPE",
    "eva02": "EVA-02 (masked image modeling of EVA-CLIP features, Fang et al. 2023); RoPE, SwiGLU",
}
PAPER = "https://arxiv.org/abs/2111.11429"


@dataclass(frozen=True)
class VitdetFile:
    """A converted backbone file, known by its metadata."""

    path: Path
    sha256: str
    config: ViTBackboneConfig
    provenance: dict
    metadata: dict[str, str]

    @property
    def family(self) -> str:
        return str(self.provenance.get("family", "unknown"))


def read_vitdet_info(path: str | Path) -> VitdetFile:
    """Read a ``--to vitdet`` file's metadata (not its tensors) and hash it.

    Raises:
        CheckpointFormatError: not a safetensors file written by ``vitinit convert --to vitdet``.
    """
    path = Path(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for a file it cannot parse
        raise CheckpointFormatError(
            f"{path} is not a readable .safetensors file ({type(e).__name__})"
        ) from None
    config, provenance = parse_vitdet_metadata(path, metadata)
    return VitdetFile(path, sha256_file(path), config, provenance, metadata)


def public_source(source: str) -> str:
    """The source as a public card may show it: URLs and ``hf://`` in full, local paths by file name only."""
    if "://" in source:
        return source
    return PurePosixPath(source.replace("\\", "/")).name or source


def base_model_of(info: VitdetFile) -> str | None:
    """The Hub repository of the source weights, when known: an ``hf://`` source, or an official file the
    registry knows a Hub copy of."""
    source = str(info.provenance.get("source") or "")
    if source.startswith("hf://"):
        return "/".join(source[len("hf://"):].split("/")[:2])
    name = public_source(source)
    for entry in OFFICIAL_CHECKPOINTS.values():
        if entry.family == info.family and entry.filename == name and entry.hf_repo:
            return entry.hf_repo
    return None


def hub_config(info: VitdetFile) -> dict:
    """``config.json``: the architecture to build and the conversion that produced the weights."""
    return {
        "library_name": "vitinit",
        "format": info.metadata.get("format"),
        "format_version": info.metadata.get("format_version"),
        "vitinit_version": info.metadata.get("vitinit_version"),
        "architecture": "DetectionViT",
        "backbone_config": json.loads(info.config.to_json()),
        "weights": {"file": WEIGHTS_NAME, "sha256": info.sha256},
        "source": {
            "family": info.family,
            "format": info.provenance.get("format"),
            "checkpoint": public_source(str(info.provenance.get("source") or "")),
            "sha256": info.provenance.get("sha256") or info.metadata.get("source_sha256") or None,
        },
        "conversion": {
            "normalization": info.provenance.get("normalization", {}),
            "dropped": info.provenance.get("dropped", {}),
            "notes": info.provenance.get("notes", []),
        },
    }


def _detectron2_command(info: VitdetFile, source: str) -> str:
    cfg = info.config
    variant = infer_variant(cfg.embed_dim, cfg.depth)
    official = any(e.family == info.family and e.filename == source for e in OFFICIAL_CHECKPOINTS.values())
    if (official or info.family == "random") and variant is not None:
        # No source argument: vitinit fetches the official release (or builds the random init).
        where = f"--model {variant.name}"
    else:
        where = source if "://" in source else f"PATH/TO/{source}"
    return (f"vitinit convert {where} --from {info.family} --to detectron2 --size {cfg.img_size} "
            f"--window-size {cfg.window_size} -o vitdet_d2.pth")


def _detectron2_section(info: VitdetFile, source: str) -> list[str]:
    """How to get these weights into upstream ViTDet, or why they cannot go there (RoPE, SwiGLU, ln_pre)."""
    missing = inexpressible(info.config)
    if missing:
        return [
            f"Not possible: upstream ViTDet's ViT has no {listed(missing)}, so `--to detectron2` refuses "
            "this source; use this backbone (above) instead."
        ]
    return [
        "detectron2's ViT keeps its own layout (decomposed relative positions, pos embed at the pre-training "
        "grid), so convert the same source checkpoint for it:",
        "",
        "```bash",
        _detectron2_command(info, source),
        "```",
        "",
        "then set `train.init_checkpoint = \"vitdet_d2.pth\"` in a ViTDet LazyConfig "
        "(e.g. `projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py`). BEiT's relative-position tables "
        "have no counterpart there: add `--drop-rel-pos` for BEiT.",
    ]


def _body(info: VitdetFile, repo_id: str, license_id: str, license_note: str, base_model: str | None) -> str:
    cfg = info.config
    prov = info.provenance
    method = METHODS.get(info.family, info.family)
    version = info.metadata.get("vitinit_version", "?")
    source = public_source(str(prov.get("source") or "")) or "–"
    source_sha = prov.get("sha256") or info.metadata.get("source_sha256") or "–"
    normalization = prov.get("normalization") or {}
    dropped = prov.get("dropped") or {}
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A plain ViT backbone (embed {cfg.embed_dim}, depth {cfg.depth}, {cfg.num_heads} heads, patch "
        f"{cfg.patch_size}) initialized from **{method}** weights and converted "
        f"by [vitinit](https://pypi.org/project/vitinit/) {version} into the "
        f"detection backbone of *Benchmarking Detection Transfer Learning with Vision Transformers* "
        f"(Li et al. 2021, [{PAPER}]({PAPER})): input {cfg.img_size}×{cfg.img_size}, windowed attention "
        f"({cfg.window_size}×{cfg.window_size} windows) with global attention in blocks "
        f"{', '.join(map(str, cfg.global_block_indexes))}, absolute position embeddings and "
        f"{cfg.rel_pos} relative position biases. These are backbone weights for fine-tuning a Mask R-CNN, "
        "not a trained detector.",
        "",
        "## Source",
        "",
        "| | |",
        "| --- | --- |",
        f"| method | {METHODS.get(info.family, info.family)} |",
        f"| source checkpoint | `{source}` |",
        f"| source sha256 | `{source_sha}` |",
        f"| source format | `{prov.get('format', '–')}` |",
        f"| base model on the Hub | {base_model or '–'} |",
        f"| weights file | `{WEIGHTS_NAME}` (sha256 `{info.sha256}`) |",
        f"| vitinit | {info.metadata.get('vitinit_version', '?')} (format {info.metadata.get('format')} "
        f"v{info.metadata.get('format_version', '?')}) |",
        "",
        "## Conversion (every normalization applied)",
        "",
        *([f"- **{k}**: {v}" for k, v in normalization.items()] or ["- none recorded"]),
        "",
        "Conversion preserves the source's function unless asked otherwise: a source without an absolute "
        "position embedding (BEiT) gets zeros; the paper's random one is drawn by the bench recipe "
        "(`model.pos_abs: random`) at training time.",
        "",
    ]
    if dropped:
        lines += ["Dropped from the source (not part of the backbone):", "",
                  *[f"- `{k}`: {v}" for k, v in dropped.items()], ""]
    if prov.get("notes"):
        lines += ["Notes:", "", *[f"- {n}" for n in prov["notes"]], ""]
    lines += [
        "## Use with vitinit",
        "",
        "```python",
        "from huggingface_hub import hf_hub_download",
        "from vitinit.modeling.vit import DetectionViT, load_backbone_state",
        "from vitinit.targets.vitdet import read_vitdet",
        "",
        f'weights = read_vitdet(hf_hub_download("{repo_id}", "{WEIGHTS_NAME}"))',
        "backbone = DetectionViT(weights.config)",
        "load_backbone_state(backbone, weights.state_dict)",
        "```",
        "",
        f"`hf://{repo_id}/{WEIGHTS_NAME}` also works as the weights source of `vitinit bench`.",
        "",
        "## Use with detectron2 (ViTDet)",
        "",
        *_detectron2_section(info, source),
        "",
        "## License",
        "",
        f"`{license_id}`, the license of the source weights ({license_note}).",
        "",
        *([f"**Gated source weights.** {GATED[info.family][2]} License: {GATED[info.family][1]}", ""]
          if info.family in GATED else []),
        "## Citation",
        "",
        "```bibtex",
        "@article{li2021benchmarking,",
        "  title={Benchmarking Detection Transfer Learning with Vision Transformers},",
        "  author={Li, Yanghao and Xie, Saining and Chen, Xinlei and Doll{\\'a}r, Piotr and He, Kaiming "
        "and Girshick, Ross},",
        "  journal={arXiv preprint arXiv:2111.11429},",
        "  year={2021}",
        "}",
        "```",
        "",
    ]
    return "\n".join(lines)


def model_card(info: VitdetFile, repo_id: str, *, base_model: str | None = None,
               license: str | None = None) -> ModelCard:
    """The card for ``repo_id``: Hub metadata (license, tags, base model) and a body stating source, method,
    normalizations, version and how to load the weights.

    Args:
        info: from :func:`read_vitdet_info`.
        repo_id: ``ORG/NAME``.
        base_model: Hub id of the source weights; default :func:`base_model_of`.
        license: Hub license id; default the source's (:data:`LICENSES`).

    Example:
        >>> card = model_card(read_vitdet_info("mae_b.safetensors"), "me/mae-vitdet-b")  # doctest: +SKIP
        >>> card.data.license  # doctest: +SKIP
        'cc-by-nc-4.0'
    """
    default_license, note = LICENSES.get(info.family, ("other", "unknown source license: check before use"))
    license_id = license or default_license
    if license and license != default_license:
        note = f"set by the publisher; the source's is {default_license}"
    base = base_model or base_model_of(info)
    gated = GATED.get(info.family) if license_id == "other" else None
    data = ModelCardData(
        license=license_id,
        license_name=gated[0] if gated else None,
        license_link=gated[1] if gated else None,
        library_name="vitinit",
        tags=["vitinit", "vision-transformer", "vitdet", "object-detection", "instance-segmentation",
              "backbone", info.family],
        base_model=base,
        pipeline_tag="image-feature-extraction",
    )
    content = f"---\n{data.to_yaml()}\n---\n\n{_body(info, repo_id, license_id, note, base)}"
    return ModelCard(content)
