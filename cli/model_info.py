"""`vitinit model-info`: the paper's complexity figures of the Mask R-CNN the benchmark trains, part by part.

Parameters and FLOPs are counted without memory (meta device and fake tensors), so ViT-L and ViT-H cost
seconds; images/s is measured with real forwards on the current device: by default only on CUDA, since on a
CPU one ViT-B forward at 1024 takes minutes (``--speed`` measures anyway, ``--no-speed`` never).
"""

from __future__ import annotations

import json

import typer
from rich.table import Table
from vitinit_cli._common import console, user_errors

# CNN baselines by name → MaskRCNNConfig.backbone_type
CNN_MODELS = {"r-101": "resnet101", "r101": "resnet101", "resnet101": "resnet101"}


def register(app: typer.Typer) -> None:
    app.command("model-info")(model_info)


@user_errors
def model_info(
    model: str = typer.Option("vit-b", "--model", "-m", help="vit-s, vit-b, vit-l, vit-h or r-101."),
    pyramid: str = typer.Option(
        "multiscale", help="multiscale (the paper's adapter + FPN), singlescale (ablation), simple (ViTDet)"
    ),
    num_classes: int = typer.Option(80, help="Object classes, without the background."),
    norm: str = typer.Option("SyncBN", help="Norm in the FPN and heads: BN, SyncBN, GN, LN, none."),
    size: int = typer.Option(1024, help="Input size (test images are padded to size × size)."),
    rel_pos: str = typer.Option("shared", help="Relative position tables: shared (paper), per_block, none."),
    speed: bool | None = typer.Option(
        None, "--speed/--no-speed", help="Measure inference images/s [default: on CUDA only]."
    ),
    iters: int = typer.Option(3, "--iters", min=1, help="Timed forwards for images/s (after one warm-up)."),
    device: str = typer.Option("auto", help="Device for the speed measurement: auto, cpu, cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON instead of a table."),
) -> None:
    """Parameters, FLOPs at SIZE (torch's FlopCounterMode) and measured images/s, per part of the detector."""
    import torch

    from vitinit.analysis.complexity import count_flops, measure_speed
    from vitinit.errors import ConfigError
    from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn
    from vitinit.modeling.vit import ViTBackboneConfig
    from vitinit.variants import VIT_VARIANTS, get_variant

    backbone_type = CNN_MODELS.get(model.lower(), "vit")
    if backbone_type == "vit" and model not in VIT_VARIANTS:
        raise ConfigError(f"unknown model size {model!r}; choose one of {', '.join(VIT_VARIANTS)}, r-101")
    vit_model = "vit-b" if backbone_type != "vit" else model
    backbone = ViTBackboneConfig.for_variant(vit_model, img_size=size, rel_pos=rel_pos)
    cfg = MaskRCNNConfig(
        backbone=backbone, num_classes=num_classes, pyramid=pyramid, norm=norm, min_size=size, max_size=size,
        backbone_type=backbone_type,
    )
    info = count_flops(build_mask_rcnn(cfg, device="meta"), size)
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but CUDA is not available")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if speed is None:
        speed = dev.type == "cuda"
    if speed:
        # Random weights score few boxes; a zero threshold sends the full 100 detections to the mask head.
        real = build_mask_rcnn(cfg.replace(box_score_thresh=0.0), device=dev)
        info.images_per_s, info.device = measure_speed(real, size, iters=iters), str(dev)
    if backbone_type == "vit":
        name = f"ViT-{get_variant(model).name[4:].upper()}"
        caption = (
            f"{backbone.embed_dim} wide, {backbone.depth} blocks, {backbone.num_heads} heads; global blocks "
            f"{', '.join(map(str, backbone.global_block_indexes))}; window {backbone.window_size}; "
            f"{pyramid} pyramid"
        )
    else:
        name, caption = "ResNet-101", "detectron2's ResNet-101 (from scratch) + FPN, same heads"
    if as_json:
        figures = info.to_dict()
        figures["parameters"] = figures.pop("params")  # the key earlier versions printed
        console.print_json(json.dumps({"model": model, "backbone_type": backbone_type, "pyramid": pyramid,
                                       "num_classes": num_classes, "norm": norm, **figures}))
        return
    table = Table(
        title=f"Mask R-CNN, {name} backbone, {size}×{size}",
        caption=(
            f"{caption}; {num_classes} classes + background; norm {norm}. FLOPs: torch FlopCounterMode "
            f"(multiply-add = 2), box head on {info.proposals} proposals, mask head on {info.detections} "
            "detections; RoIAlign/NMS not counted."
        ),
    )
    for col in ("part", "parameters", "share", "GFLOPs", "share "):
        table.add_column(col, justify="left" if col == "part" else "right")
    p_total, f_total = info.params["total"], info.flops.get("total") or 1
    for part, n in info.params.items():
        f = info.flops.get(part)
        table.add_row(
            part, f"{n / 1e6:.2f} M", f"{100 * n / p_total:.1f} %",
            "–" if f is None else f"{f / 1e9:.1f}", "–" if f is None else f"{100 * f / f_total:.1f} %",
            style="bold" if part == "total" else None,
        )
    console.print(table)
    if not speed:
        console.print("inference images/s: not measured (pass --speed; on CPU at 1024 it takes minutes)",
                      highlight=False)
    if info.images_per_s is not None:
        console.print(f"inference: {info.images_per_s:.3g} images/s on {info.device} (batch 1, {size}×{size},"
                      f" random weights, {iters} timed forwards)", highlight=False)
