"""The ``vitinit`` command: each subcommand lives in its own module and only parses, calls, prints."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vitinit",
    help=(
        "ViT initializations (BEiT, MAE, MoCo v3, supervised, random) → detection backbones "
        "→ Mask R-CNN benchmarks."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so `vitinit --help` stays cheap and each command module stays independent.
    from vitinit_cli import bench, convert, evaluate, inspect, model_info, predict, publish, report, show_data

    for module in (convert, inspect, model_info, bench, evaluate, predict, report, show_data, publish):
        module.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
