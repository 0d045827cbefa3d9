"""`vitinit inspect`: what a checkpoint is and what `vitinit convert` would do with it (writes nothing)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping

import typer
from rich.table import Table
from rich.text import Text
from vitinit_cli._common import console, setup_logging, user_errors

from vitinit.errors import quote
from vitinit.families import FAMILIES
from vitinit.io.load import RawCheckpoint


def _vitdet_metadata(raw: RawCheckpoint) -> dict | None:
    """The metadata of a file written by ``vitinit convert --to vitdet`` (``.safetensors`` or its ``.pth``
    copy, whose ``metadata`` entry holds the same strings), None for any other file."""
    from vitinit.targets.vitdet import is_vitdet

    node = raw.metadata if raw.container == "safetensors" else raw.tree.get("metadata")
    metadata = {str(k): v for k, v in node.items()} if isinstance(node, Mapping) else {}
    return metadata if is_vitdet(metadata) else None


def _text(value: object) -> Text:
    """A metadata value as plain text (never rich markup), cut to a readable length."""
    return Text(value if isinstance(value, str) and len(value) <= 200 else quote(value, 200))


def _show_vitdet(source: str, metadata: dict, n_tensors: int) -> None:
    """What a converted backbone is and where it came from, as its metadata records it."""
    from vitinit.targets.vitdet import parse_vitdet_metadata

    config, prov = parse_vitdet_metadata(source, metadata)
    prov = prov if isinstance(prov, dict) else {}
    console.print(
        f"{source}: a vitinit [bold]vitdet[/] backbone (format {metadata.get('format_version')}, written by "
        f"vitinit {metadata.get('vitinit_version')}), {n_tensors} tensors",
        highlight=False, soft_wrap=True,
    )
    info = Table(show_header=False, title="provenance", title_justify="left")
    for key in ("family", "format", "source", "sha256"):
        info.add_row(key, _text(prov.get(key)))
    norm = prov.get("input_norm")
    if isinstance(norm, dict) and norm:
        mean_std = f"{norm.get('mean')} / {norm.get('std')} ({norm.get('from')})"
        info.add_row("input mean / std", _text(mean_std))
    else:
        info.add_row("input mean / std", "not recorded")
    for k, v in (prov.get("normalization") if isinstance(prov.get("normalization"), dict) else {}).items():
        info.add_row(_text(f"normalized: {str(k).replace('_', ' ')}"), _text(v))
    console.print(info)
    dropped = Table("dropped", "why", title="not part of the backbone", title_justify="left")
    for k, why in (prov.get("dropped") if isinstance(prov.get("dropped"), dict) else {}).items():
        dropped.add_row(_text(k), _text(why))
    console.print(dropped)
    console.print(Text(f"backbone config: {config.to_json()}"), soft_wrap=True)  # rebuilt: bounded


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)


def group_keys(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    """Collapse numbered keys: ``blocks.{0..11}.attn.qkv.*`` with the number of tensors in each group."""
    groups: dict[str, dict[str, set]] = defaultdict(lambda: {"idx": set(), "leaf": set(), "n": set()})
    for key in shapes:
        module, _, leaf = key.rpartition(".")
        numbers = re.findall(r"(?<=\.)\d+(?=\.|$)", module)
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "#", module) if module else leaf
        g = groups[pattern]
        g["idx"].update(int(n) for n in numbers[:1])
        g["leaf"].add(leaf if module else "")
        g["n"].add(key)
    out = []
    for pattern, g in groups.items():
        idx = sorted(g["idx"])
        text = pattern.replace(
            "#", f"{{{idx[0]}..{idx[-1]}}}" if len(idx) > 1 else str(idx[0]) if idx else "#", 1
        )
        leaves = sorted(x for x in g["leaf"] if x)
        if leaves:
            text += "." + (leaves[0] if len(leaves) == 1 else "*")
        out.append((text, len(g["n"])))
    return out


@user_errors
def inspect_cmd(
    source: str = typer.Argument(..., help="Checkpoint file or transformers folder."),
    family: str = typer.Option("auto", "--from", help=" | ".join(("auto", *FAMILIES))),
    model: str = typer.Option(None, "--model", help="Expected size (checked against the shapes)."),
    num_heads: int = typer.Option(None, "--num-heads", help="Head count (custom sizes only)."),
    size: int = typer.Option(1024, "--size", help="Detection input size for the conversion preview."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
) -> None:
    """Print the detected format, model size, key summary, dropped keys and the conversion plan."""
    setup_logging(verbose)
    from vitinit.formats import detect_family, read_checkpoint
    from vitinit.io.load import open_checkpoint
    from vitinit.normalize.detection import detection_config, to_vitdet

    raw = open_checkpoint(source)
    metadata = _vitdet_metadata(raw)
    if metadata is not None:  # vitinit's own output: its provenance, not a guess from the keys
        _show_vitdet(source, metadata, len(raw.tensors()))
        return
    shapes = {k: t.shape for k, t in raw.tensors().items()}
    keys = Table(title=f"{source}: {raw.container}, {len(shapes)} tensors", title_justify="left")
    keys.add_column("keys")
    keys.add_column("tensors", justify="right")
    for text, n in group_keys(shapes):
        keys.add_row(text, str(n))
    console.print(keys)
    fam, _, scores = detect_family(raw, family)
    console.print(f"format: [bold]{fam}[/] (scores {scores})", highlight=False)
    ckpt = read_checkpoint(source, family=fam, model=model, num_heads=num_heads)
    s = ckpt.spec
    console.print(
        f"model: {s.variant or 'custom'} — width {s.embed_dim}, depth {s.depth}, heads {s.num_heads}, "
        f"patch {s.patch_size}, pre-training grid {s.pretrain_grid[0]}x{s.pretrain_grid[1]}, "
        f"layer scale {'yes' if s.layer_scale else 'no'}, relative position tables {s.rel_pos}, "
        f"RoPE {s.rope.variant if s.rope else 'no'}, MLP {s.mlp}{' + sub-LN' if s.mlp_norm else ''}, "
        f"pre-norm {'yes' if s.pre_norm else 'no'}, q/k/v bias {s.qkv_bias}",
        highlight=False,
        soft_wrap=True,
    )
    norm = ckpt.provenance.input_norm
    console.print(
        f"input normalisation: mean {norm['mean']} std {norm['std']} ({norm['from']})"
        if norm
        else "input normalisation: not recorded (vitinit bench uses ImageNet's unless the recipe sets it)",
        highlight=False,
        soft_wrap=True,
    )
    dropped = Table("dropped", "why", title="not part of the backbone", title_justify="left")
    for k, why in ckpt.provenance.dropped.items():
        dropped.add_row(k, why)
    console.print(dropped)
    _, prov = to_vitdet(ckpt, detection_config(s, img_size=size), seed=0)  # lazy: nothing is computed
    plan = Table(show_header=False, title=f"convert --to vitdet --size {size} would", title_justify="left")
    for k in ("abs_pos", "rel_pos", "rel_pos_rule", "rope", "layer_scale"):
        if k in prov.normalization:
            plan.add_row(k.replace("_", " "), str(prov.normalization[k]))
    console.print(plan)
