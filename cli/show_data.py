"""`vitinit show-data RECIPE [key=value ...] [-n N] [-o DIR]`: pictures of what training feeds the model."""

from __future__ import annotations

from pathlib import Path

import typer
from vitinit_cli._common import console, setup_logging, user_errors


def register(app: typer.Typer) -> None:
    app.command("show-data")(show_data)


@user_errors
def show_data(
    name: str = typer.Argument(..., help="Recipe name (see `vitinit bench --list`) or a recipe .yaml file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. data.scale_range=[0.1,2.0]."),
    num: int = typer.Option(8, "-n", "--num", min=1, help="Training images to show."),
    output: Path = typer.Option(Path("vitinit-data"), "-o", "--output", help="Folder for the PNGs."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random crops (same seed, same pictures)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at info level."),
) -> None:
    """Draw the first N training images with their annotations, before and after the LSJ augmentation.

    The check to run first when a new dataset gives bad AP: boxes on their objects, masks following them
    after the crop, class names right, objects still visible at the smallest scale.
    """
    setup_logging(verbose)
    from vitinit import bench as lib
    from vitinit.analysis.data_view import write_samples

    recipe = lib.resolve(name, overrides or [])
    data = lib.build_datasets(recipe)
    paths = write_samples(data.train, output, n=num, size=recipe["data"]["image_size"], seed=seed)
    d = recipe["data"]
    console.print(
        f"{len(paths)} training samples of {recipe['name']} ({d['dataset']}, {len(data.train)} images, "
        f"LSJ scale {d['scale_range'][0]}–{d['scale_range'][1]} of {d['image_size']}², flip {d['flip']}) "
        f"in {output.resolve()}/",
        highlight=False, soft_wrap=True,
    )
