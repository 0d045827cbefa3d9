"""`vitinit publish OUT --repo ORG/NAME [--private] [--dry-run]`: share a converted backbone on the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from vitinit_cli._common import console, setup_logging, user_errors


@user_errors
def publish(
    weights: Annotated[
        Path, typer.Argument(help="A `--to vitdet` .safetensors file, or a folder holding one.")
    ],
    repo: Annotated[str, typer.Option("--repo", help="Hub repository, ORG/NAME (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the files and the card; upload nothing, need no token.")
    ] = False,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="Hub id of the source weights (default: from provenance)."),
    ] = None,
    license: Annotated[
        str | None, typer.Option("--license", help="Hub license id (default: the source's license).")
    ] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", help="Commit message.")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Upload model.safetensors, config.json and a model card (README.md) to the Hugging Face Hub.

    The token comes from HF_TOKEN or `hf auth login`; it is never printed.
    """
    from vitinit.hub.publish import publish as run_publish

    setup_logging(verbose)
    result = run_publish(weights, repo, private=private, dry_run=dry_run, base_model=base_model,
                         license=license, commit_message=message)
    if result.notice:
        console.print(f"note: {result.notice}", style="bold yellow", highlight=False, soft_wrap=True)
    verb = "would upload" if dry_run else "uploaded"
    table = Table("file in repo", "bytes", "from", title=f"{verb} to {result.repo_id}"
                  + (" (private)" if private else ""))
    for f in result.files:
        table.add_row(f.path_in_repo, f"{f.size:,}", f.origin)
    console.print(table)
    if dry_run:
        console.rule("README.md")
        console.print(result.card, markup=False, highlight=False, soft_wrap=True)
        console.rule("config.json")
        import json

        console.print(json.dumps(result.config, indent=2), markup=False, highlight=False, soft_wrap=True)
        console.print("dry run: nothing was uploaded", style="bold")
    else:
        console.print(f"published {result.url}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
