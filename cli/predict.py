"""`vitinit predict RUN IMAGE...|FOLDER -o DIR`: a trained run's detections drawn on the user's own images
(see ``vitinit.bench.trained``), as detectron2's demo draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from vitinit_cli._common import console, setup_logging, user_errors


@user_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `vitinit bench`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders of images.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the pictures.")] = Path(
        "vitinit-predictions"
    ),
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Weights to use (default RUN/checkpoints/last.pth).")
    ] = None,
    score_threshold: Annotated[
        float,
        typer.Option("--score-threshold", min=0.0, max=1.0, help="Draw detections scoring at least this."),
    ] = 0.5,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Draw a trained run's detections on your images (boxes, masks, class, score).

    One PNG per image in -o DIR, and DIR/detections.json with every detection.
    """
    setup_logging(verbose)
    from vitinit.bench.trained import predict_images

    written = predict_images(run_dir, images, output, checkpoint=checkpoint, score_thresh=score_threshold)
    console.print(
        f"{len(written)} pictures in {output}/ (detections ≥ {score_threshold:g}); all detections in "
        f"{output / 'detections.json'}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
