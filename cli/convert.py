"""`vitinit convert`: one checkpoint → a detection backbone file (thin layer over ``vitinit.convert``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from vitinit_cli._common import console, setup_logging, user_errors

from vitinit.families import FAMILIES


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_cmd)


@user_errors
def convert_cmd(
    source: str = typer.Argument(
        None,
        help="Checkpoint file, transformers folder or hf://ORG/REPO\\[/FILE]; omitted: the official "
        "checkpoint of --from/--model (downloaded once into the cache).",
    ),
    family: str = typer.Option("auto", "--from", help=" | ".join(("auto", *FAMILIES))),
    target: str = typer.Option(
        "vitdet", "--to", help="vitdet (this project's backbone) | detectron2 (ViTDet)"
    ),
    size: int = typer.Option(1024, "--size", help="Detection input size in pixels (grid = size / patch)."),
    model: str = typer.Option(
        None, "--model", help="Expected size: vit-s | vit-b | vit-l | vit-h (checked)."
    ),
    output: Path = typer.Option(None, "-o", "--output", help="Output file (default: a descriptive name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    layer_scale: str = typer.Option("keep", "--layer-scale", help="keep (the paper) | fold into the linears"),
    rel_pos: str = typer.Option(
        "auto", "--rel-pos", help="auto (as the source) | shared (the paper's two tables; averages a "
        "fine-tuned BEiT's per-block tables, lossy) | per-block | none",
    ),
    abs_pos: str = typer.Option(
        "auto", "--abs-pos", help="auto (the source's; zeros where it has none) | zero | random | none",
    ),
    rel_pos_resize: str = typer.Option("geometric", "--rel-pos-resize", help="geometric (BEiT's) | bicubic"),
    window_size: int = typer.Option(14, "--window-size", help="Window of the windowed blocks, in tokens."),
    num_heads: int = typer.Option(None, "--num-heads", help="Head count (custom sizes only)."),
    pth: bool = typer.Option(False, "--pth", help="Also write a .pth copy (vitdet target)."),
    drop_rel_pos: bool = typer.Option(
        False, "--drop-rel-pos", help="detectron2 target: drop BEiT's relative position tables."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of freshly initialized tensors."),
    patch_size: int = typer.Option(
        None, "--patch-size", help="Resample the patch kernel, e.g. 16 for DINOv2 / ViT-H/14 (lossy)."
    ),
    expect_sha256: str = typer.Option(
        None, "--expect-sha256", metavar="HEX",
        help="The source's published sha256 (the weights file's, for a folder): checked while converting, "
        "and the first conversion of a file then reads it through sha256 once instead of twice.",
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Convert BEiT / MAE / MoCo v3 / supervised / random ViT weights into a detection backbone."""
    setup_logging(verbose)
    from vitinit.convert import convert
    from vitinit.io.save import check_container_suffix

    if output is not None and target in ("vitdet", "detectron2"):  # before reading a multi-GB source
        check_container_suffix(output, "safetensors" if target == "vitdet" else "torch")

    result = convert(
        source,
        family=family,
        target=target,
        size=size,
        model=model,
        output=output,
        overwrite=overwrite,
        layer_scale=layer_scale,
        rel_pos=rel_pos.replace("-", "_"),
        rel_pos_resize=rel_pos_resize,
        abs_pos=abs_pos,
        window_size=window_size,
        num_heads=num_heads,
        pth=pth,
        drop_rel_pos=drop_rel_pos,
        seed=seed,
        progress=console.is_terminal,
        patch_size=patch_size,
        expected_sha256=expect_sha256,
    )
    table = Table(
        title=f"{result.family} → {result.target} ({result.spec.variant or 'custom size'})",
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    for line in result.actions:
        what, _, detail = line.partition(": ") if ": " in line else (line, "", "")
        table.add_row(what, detail)
    console.print(table)
    console.print(f"wrote {result.path}", highlight=False, soft_wrap=True)
    console.print(f"sha256 {result.sha256}", highlight=False)
    if result.pth_path is not None:
        console.print(f"wrote {result.pth_path}\nsha256 {result.pth_sha256}", highlight=False, soft_wrap=True)
