"""`vitinit model-info`: parameter counts of the Mask R-CNN the benchmark trains, part by part.

The model is built on the meta device, so ViT-L and ViT-H cost neither memory nor initialization time.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table
from vitinit_cli._common import console, user_errors


def register(app: typer.Typer) -> None:
    app.command("model-info")(model_info)


@user_errors
def model_info(
    model: str = typer.Option("vit-b", "--model", "-m", help="ViT size: vit-s, vit-b, vit-l, vit-h."),
    pyramid: str = typer.Option(
        "multiscale", help="multiscale (the paper's adapter + FPN), singlescale (ablation), simple (ViTDet)"
    ),
    num_classes: int = typer.Option(80, help="Object classes, without the background."),
    norm: str = typer.Option("SyncBN", help="Norm in the FPN and heads: BN, SyncBN, GN, LN, none."),
    size: int = typer.Option(1024, help="Input size; sets the absolute position embedding's grid."),
    rel_pos: str = typer.Option("shared", help="Relative position tables: shared (paper), per_block, none."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON instead of a table."),
) -> None:
    """Parameter counts of the Mask R-CNN: ViT backbone, adapter + FPN, RPN, box head, mask head, total."""
    from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn, parameter_breakdown
    from vitinit.modeling.vit import ViTBackboneConfig
    from vitinit.variants import get_variant

    backbone = ViTBackboneConfig.for_variant(model, img_size=size, rel_pos=rel_pos)
    cfg = MaskRCNNConfig(
        backbone=backbone, num_classes=num_classes, pyramid=pyramid, norm=norm, min_size=size, max_size=size
    )
    parts = parameter_breakdown(build_mask_rcnn(cfg, device="meta"))
    if as_json:
        console.print_json(json.dumps({"model": model, "pyramid": pyramid, "num_classes": num_classes,
                                       "size": size, "parameters": parts}))
        return
    total = parts["total"]
    table = Table(
        title=f"Mask R-CNN, ViT-{get_variant(model).name[4:].upper()} backbone, {pyramid} pyramid",
        caption=(
            f"{backbone.embed_dim} wide, {backbone.depth} blocks, {backbone.num_heads} heads; global blocks "
            f"{', '.join(map(str, backbone.global_block_indexes))}; window {backbone.window_size}; "
            f"{size}×{size} input; {num_classes} classes + background; norm {norm}"
        ),
    )
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("millions", justify="right")
    table.add_column("share", justify="right")
    for name, n in parts.items():
        style = "bold" if name == "total" else None
        table.add_row(name, f"{n:,}", f"{n / 1e6:.2f} M", f"{100 * n / total:.1f} %", style=style)
    console.print(table)
