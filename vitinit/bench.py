"""The benchmark as one library call: recipe → backbone weights → Mask R-CNN → training → COCO AP.

``run_bench("mae-vitb")`` is what ``vitinit bench mae-vitb`` does. The run folder (the contract the results
tools read)::

    RUN_DIR/recipe.yaml           the fully resolved recipe
    RUN_DIR/weights.json          provenance of the backbone weights
    RUN_DIR/metrics.jsonl         {"kind": "train", ...} and {"kind": "eval", ...} lines
    RUN_DIR/eval/iter_XXXXXXX/    metrics.json, bbox.json, segm.json (COCO results format)
    RUN_DIR/results.json          status, final and best metrics, val annotations, last eval dir
    RUN_DIR/checkpoints/last.pth  trainer state for --resume
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vitinit.data.coco import CocoDetection, coco2017_split, collate, datasets_root
from vitinit.data.transforms import lsj_transform, test_transform
from vitinit.engine import distributed as du
from vitinit.engine import hooks as H
from vitinit.engine.optim import build_optimizer
from vitinit.engine.sampler import SeededSamples, StreamSampler
from vitinit.engine.trainer import Trainer
from vitinit.errors import ConfigError, DatasetError, TrainingError
from vitinit.evaluation.coco import COCOEvaluator
from vitinit.io.save import atomic_path
from vitinit.modeling.mask_rcnn import MaskRCNNConfig, build_mask_rcnn, convert_sync_batchnorm
from vitinit.modeling.vit import ViTBackboneConfig, load_backbone_state, quarter_block_indexes
from vitinit.recipes import load_recipe, to_plain, to_yaml
from vitinit.variants import VIT_VARIANTS

log = logging.getLogger(__name__)

INITS = ("random", "supervised", "mocov3", "beit", "mae")


# --- recipe → pieces -----------------------------------------------------------------------------------


def global_blocks(spec: Any, depth: int) -> tuple[int, ...]:
    """``quarter`` (the paper), ``none`` (all windowed), ``all`` (all global), or explicit indexes."""
    if spec == "quarter":
        return quarter_block_indexes(depth)
    if spec == "none":
        return ()
    if spec == "all":
        return tuple(range(depth))
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return tuple(int(i) for i in spec)
    raise ConfigError(f"model.global_blocks must be quarter, none, all or a list of indexes, got {spec!r}")


def _rel_pos_style(m: dict) -> str:
    return "none" if m["pos_rel"] == "none" else m["rel_pos"]


def _backbone_options(m: dict, depth: int) -> dict[str, Any]:
    return dict(
        img_size=m["img_size"],
        window_size=m["window_size"],
        global_block_indexes=global_blocks(m["global_blocks"], depth),
        drop_path_rate=m["drop_path"],
        use_act_checkpoint=m["act_checkpoint"],
        use_abs_pos=m["pos_abs"] != "none",
    )


def random_backbone_config(recipe: dict) -> ViTBackboneConfig:
    """The backbone of a randomly initialized run: a named size, or ``model.backbone`` for a custom one."""
    m = recipe["model"]
    size = dict(m.get("backbone") or {})
    if m["variant"] != "custom":
        v = VIT_VARIANTS.get(m["variant"])
        if v is None:
            raise ConfigError(
                f"unknown model.variant {m['variant']!r}; use one of {', '.join(VIT_VARIANTS)} or custom"
            )
        size = {
            "embed_dim": v.embed_dim,
            "depth": v.depth,
            "num_heads": v.num_heads,
            "patch_size": v.patch_size,
            "mlp_hidden_dim": v.mlp_hidden_dim,
            **size,
        }
    missing = {"embed_dim", "depth", "num_heads"} - set(size)
    if missing:
        raise ConfigError(f"model.variant=custom needs model.backbone.{sorted(missing)[0]}")
    size.setdefault("mlp_hidden_dim", 4 * size["embed_dim"])
    opts = _backbone_options(m, size["depth"])
    return ViTBackboneConfig(**{**size, **opts, "rel_pos": _rel_pos_style(m)})


def describe_weights(recipe: dict) -> str:
    """Where the backbone weights of ``recipe`` come from, in words (``--dry-run``); downloads nothing."""
    w, variant = recipe["weights"], recipe["model"]["variant"]
    if w["init"] == "random" and not w["source"]:
        return f"random initialization of {variant} (DetectionViT's own init, seed {recipe['train']['seed']})"
    if w["source"]:
        kind = "Hugging Face Hub" if str(w["source"]).startswith("hf://") else "local file"
        return f"{w['init']} weights from {kind} {w['source']}"
    try:
        from vitinit.io.registry import official_checkpoint

        entry = official_checkpoint(w["init"], variant)
    except ImportError:
        entry = None
    if entry is None:
        return f"no official {w['init']} checkpoint for {variant} is registered: set weights.source"
    from vitinit.io.remote import _cache_root

    return f"official {w['init']} {variant} checkpoint {entry.url} (downloaded once into {_cache_root(None)})"


def load_weights(recipe: dict) -> tuple[ViTBackboneConfig, dict[str, torch.Tensor] | None, dict]:
    """(backbone config, backbone state dict or None for a fresh init, provenance dict)."""
    w, m = recipe["weights"], recipe["model"]
    if w["init"] not in INITS:
        raise ConfigError(f"weights.init must be one of {', '.join(INITS)}, got {w['init']!r}")
    if w["init"] == "random" and not w["source"]:
        config = random_backbone_config(recipe)
        return (
            config,
            None,
            {
                "family": "random",
                "format": "init",
                "source": None,
                "sha256": None,
                "notes": [
                    "DetectionViT.reset_parameters (trunc-normal 0.02, zero rel-pos), "
                    f"seed {recipe['train']['seed']}"
                ],
            },
        )
    from vitinit.io.remote import resolve_source

    variant = None if m["variant"] == "custom" else m["variant"]
    path = resolve_source(
        w["source"], family=w["init"], model=variant or "vit-b", progress=du.is_main_process()
    )
    if path is not None and str(path).endswith(".safetensors") and _is_vitdet(path):
        return _load_converted(path, recipe)
    from vitinit.formats import read_checkpoint
    from vitinit.normalize.detection import to_vitdet

    ckpt = read_checkpoint(path, family=w["init"], model=variant, seed=w["seed"])
    config = pretrained_backbone_config(recipe, ckpt.spec)
    # Convert with every positional tensor, then drop what the ablation removes (pos_abs / pos_rel = none).
    full = config.replace(rel_pos="shared" if config.rel_pos == "none" else config.rel_pos, use_abs_pos=True)
    tensors, provenance = to_vitdet(ckpt, full, layer_scale=m["layer_scale"], seed=w["seed"])
    state = {k: t.load() for k, t in tensors.items()}
    if not config.use_abs_pos:
        state.pop("pos_embed")
    if config.rel_pos == "none":
        state = {k: v for k, v in state.items() if "relative_position_bias_table" not in k}
    return config, state, provenance.to_dict()


def pretrained_backbone_config(recipe: dict, spec: Any) -> ViTBackboneConfig:
    """The detection backbone for a source architecture (a ``ViTSpec``) under the recipe's options."""
    from vitinit.normalize.detection import detection_config

    m = recipe["model"]
    opts = _backbone_options(m, spec.depth)
    use_abs_pos = opts.pop("use_abs_pos")
    rel = _rel_pos_style(m)
    config = detection_config(
        spec,
        img_size=opts.pop("img_size"),
        window_size=opts.pop("window_size"),
        global_block_indexes=opts.pop("global_block_indexes"),
        rel_pos="shared" if rel == "none" else rel,
        layer_scale=m["layer_scale"],
        **opts,
    )
    return config.replace(rel_pos=rel, use_abs_pos=use_abs_pos)


def _is_vitdet(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("format") == "vitinit.vitdet"


def _load_converted(path: Path, recipe: dict) -> tuple[ViTBackboneConfig, dict[str, torch.Tensor], dict]:
    """A ``vitinit convert --to vitdet`` file: its config wins, the recipe's training knobs apply."""
    from vitinit.targets.vitdet import read_vitdet

    weights = read_vitdet(path)
    m = recipe["model"]
    config = weights.config.replace(drop_path_rate=m["drop_path"], use_act_checkpoint=m["act_checkpoint"])
    return config, weights.state_dict, weights.provenance


def apply_position_policy(vit: torch.nn.Module, recipe: dict) -> list[str]:
    """Re-initialize positional parameters as ``model.pos_abs`` / ``model.pos_rel`` ask; say what changed."""
    m, done = recipe["model"], []
    gen = torch.Generator().manual_seed(recipe["weights"]["seed"])
    with torch.no_grad():
        if vit.pos_embed is not None and m["pos_abs"] == "random":
            vit.pos_embed.copy_(
                torch.nn.init.trunc_normal_(torch.empty_like(vit.pos_embed), std=0.02, generator=gen)
            )
            done.append("pos_embed: random (trunc-normal 0.02)")
        elif vit.pos_embed is not None and m["pos_abs"] == "zero":
            vit.pos_embed.zero_()
            done.append("pos_embed: zero")
        if m["pos_rel"] == "zero":
            for name, p in vit.named_parameters():
                if "relative_position_bias_table" in name:
                    p.zero_()
            done.append("relative position tables: zero")
    return done


def build_model(recipe: dict, backbone: ViTBackboneConfig, num_classes: int) -> torch.nn.Module:
    m = recipe["model"]
    cfg = MaskRCNNConfig(
        backbone=backbone,
        num_classes=num_classes,
        pyramid=m["pyramid"],
        fpn_channels=m["fpn_channels"],
        norm=m["norm"],
        min_size=recipe["data"]["image_size"],
        max_size=recipe["data"]["image_size"],
        image_mean=tuple(m["pixel_mean"]),
        image_std=tuple(m["pixel_std"]),
        **(m.get("detector") or {}),
    )
    return build_mask_rcnn(cfg)


@dataclass
class Datasets:
    train: CocoDetection
    val: CocoDetection


def build_datasets(recipe: dict) -> Datasets:
    d = recipe["data"]
    size = d["image_size"]
    train_tf = lsj_transform(size, scale_range=d["scale_range"], flip=d["flip"])
    if d["dataset"] == "synthetic":
        from vitinit.data.synthetic import SyntheticSpec, synthetic_coco

        # Generated once, by the first process; the others wait and read the same cache.
        splits = synthetic_coco(SyntheticSpec(**(d.get("synthetic") or {}))) if du.is_main_process() else None
        du.barrier()
        splits = splits or synthetic_coco(SyntheticSpec(**(d.get("synthetic") or {})))
        train = (splits.train_images, splits.train_annotations)
        val = (splits.val_images, splits.val_annotations)
    elif d["dataset"] == "coco":
        base = datasets_root(d["root"])
        train = (base / d["train"]["images"], base / d["train"]["annotations"])
        val = (base / d["val"]["images"], base / d["val"]["annotations"])
        if not train[1].is_file() and d["train"]["images"] == "coco/train2017":
            hint = coco2017_split("train", d["root"])
            raise DatasetError(
                f"COCO 2017 not found: {hint.annotations} is missing; put COCO under "
                f"{base}/coco or set $VITINIT_DATASETS (or data.root=...)"
            )
    elif d["dataset"] == "custom":
        train = (Path(d["train"]["images"]), Path(d["train"]["annotations"]))
        val = (Path(d["val"]["images"]), Path(d["val"]["annotations"]))
    else:
        raise ConfigError(f"data.dataset must be coco, custom or synthetic, got {d['dataset']!r}")
    ds = Datasets(
        train=CocoDetection(*train, transforms=train_tf, train=True),
        val=CocoDetection(*val, transforms=test_transform()),
    )
    if ds.train.label_to_category != ds.val.label_to_category:
        raise DatasetError("train and val annotation files define different categories")
    return ds


# --- the run folder ------------------------------------------------------------------------------------


def default_run_dir(name: str, *, resume: bool, root: str | Path = "runs") -> Path:
    """``runs/NAME/<timestamp>``; with ``resume``, the newest existing one."""
    base = Path(root) / name
    if resume:
        runs = sorted(p for p in base.glob("*") if (p / "checkpoints" / "last.pth").is_file())
        if not runs:
            raise TrainingError(f"nothing to resume: no run of {name} with a checkpoint under {base}")
        return runs[-1]
    return base / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def _summary(entry: dict | None) -> dict | None:
    return None if entry is None else {k: entry[k] for k in ("iter", "epoch", "bbox", "segm") if k in entry}


def write_results(
    run_dir: Path,
    recipe: dict,
    history: list[dict],
    status: str,
    val_annotations: Path,
    error: str | None = None,
) -> dict:
    final = history[-1] if history else None
    best = max(history, key=lambda e: e["bbox"]["AP"] or 0.0) if history else None
    results = {
        "status": status,
        "name": recipe["name"],
        "init": recipe["weights"]["init"],
        "variant": recipe["model"]["variant"],
        "iters": recipe["schedule"]["iters"],
        "epochs": recipe["schedule"]["epochs"],
        "final": _summary(final),
        "best": _summary(best),
        "history": [_summary(e) for e in history],
        "world_size": du.world_size(),
        "val_annotations": str(Path(val_annotations).resolve()),
        "eval_dir": f"eval/iter_{final['iter']:07d}" if final else None,
    }
    if error:
        results["error"] = error
    write_json(run_dir / "results.json", results)
    return results


# --- training (one process) ----------------------------------------------------------------------------


def _device(recipe: dict, device: torch.device) -> torch.device:
    want = recipe["train"]["device"]
    if want == "cpu":
        return torch.device("cpu")
    if want == "cuda" and device.type != "cuda":
        raise ConfigError("train.device=cuda but CUDA is not available")
    return device


def _amp(recipe: dict, device: torch.device) -> str | None:
    amp = recipe["train"]["amp"]
    if amp == "auto":
        return "bf16" if device.type == "cuda" else None
    return None if amp in (None, "none", False) else amp


def train_worker(recipe: dict, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate ``recipe`` in this process (one rank of a run when ``WORLD_SIZE`` is set)."""
    run_dir = Path(run_dir)
    device = _device(recipe, du.init_distributed())
    world, rank = du.world_size(), du.rank()
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    try:
        return _train(recipe, run_dir, device, resume=resume, progress=progress, world=world, rank=rank)
    finally:
        du.destroy_distributed()


def _train(
    recipe: dict, run_dir: Path, device: torch.device, *, resume: bool, progress: bool, world: int, rank: int
) -> dict:
    main = rank == 0
    seed = recipe["train"]["seed"]
    data = build_datasets(recipe)
    torch.manual_seed(seed)  # same fresh weights on every rank
    backbone, state, provenance = load_weights(recipe)
    model = build_model(recipe, backbone, data.train.num_classes)
    if state is not None:
        load_backbone_state(model.backbone.vit, state)
    changed = apply_position_policy(model.backbone.vit, recipe)
    if changed:
        provenance = {**provenance, "position_policy": changed}
    model = convert_sync_batchnorm(model, device).to(device)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "weights.json", provenance)
        with atomic_path(run_dir / "recipe.yaml") as tmp:
            tmp.write_text(to_yaml(recipe))

    o, s, t = recipe["optim"], recipe["schedule"], recipe["train"]
    optimizer = build_optimizer(
        model, lr=o["lr"], weight_decay=o["weight_decay"], betas=o["betas"], layer_decay=o["layer_decay"]
    )
    ddp_model = model
    if world > 1:
        blocks = set(backbone.global_block_indexes)
        unused = not blocks or len(blocks) == backbone.depth  # one shared rel-pos table is then unused
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )

    lr_hook = H.LRSchedule(
        warmup_iters=s["warmup_iters"],
        warmup_factor=s["warmup_factor"],
        policy=s["policy"],
        milestones=tuple(s["milestones"]),
        gamma=s["gamma"],
    )
    metrics = H.MetricsWriter(run_dir / "metrics.jsonl", t["log_period"], lr_hook=lr_hook)
    epoch_of = lambda it: round(it * t["batch_size"] / recipe["data"]["epoch_images"], 4)  # noqa: E731

    def evaluate(iteration: int) -> dict:
        result = run_evaluation(model, data.val, recipe, device, run_dir / "eval" / f"iter_{iteration:07d}")
        entry = {"kind": "eval", "iter": iteration, "epoch": epoch_of(iteration), **result}
        if main:
            write_json(
                run_dir / "eval" / f"iter_{iteration:07d}" / "metrics.json",
                {k: v for k, v in entry.items() if k != "kind"},
            )
            metrics.write(entry)
            write_results(run_dir, recipe, [*eval_hook.history, entry], "running", data.val.annotation_file)
        return entry

    e = recipe["eval"]
    eval_hook = H.Evaluate(evaluate, e["period"] or 0, at_start=e["at_start"])
    checkpoint = H.Checkpoint(run_dir / "checkpoints", t["checkpoint_period"])
    trainer = Trainer(
        ddp_model,
        optimizer,
        None,
        max_iter=s["iters"],
        device=device,
        amp=_amp(recipe, device),
        clip_grad_norm=o["clip_grad_norm"],
        hooks=[
            lr_hook,
            eval_hook,
            checkpoint,
            metrics,
            H.Progress(lr_hook=lr_hook, enabled=progress, description=recipe["name"]),
        ],
    )
    if resume:
        if not checkpoint.last.is_file():
            raise TrainingError(f"nothing to resume: {checkpoint.last} does not exist")
        trainer.load_state_dict(H.restore_rng(H.load_checkpoint(checkpoint.last)))
        log.info("resuming %s at iteration %d", run_dir, trainer.start_iter)
    trainer.data = _train_loader(data.train, recipe, trainer.start_iter, rank, world)
    try:
        trainer.train()
    except BaseException as err:
        if main:
            msg = " ".join(str(err).split()) or type(err).__name__
            write_results(run_dir, recipe, eval_hook.history, "failed", data.val.annotation_file, error=msg)
        raise
    results = (
        write_results(run_dir, recipe, eval_hook.history, "finished", data.val.annotation_file)
        if main
        else {}
    )
    if main and importlib.util.find_spec("tidecv") is not None:
        _tide(run_dir)
    return results


def _train_loader(
    dataset: CocoDetection, recipe: dict, start_iter: int, rank: int, world: int
) -> torch.utils.data.DataLoader:
    seed = recipe["train"]["seed"]
    sampler = StreamSampler(
        len(dataset),
        batch_size=recipe["train"]["batch_size"],
        seed=seed,
        start_iter=start_iter,
        rank=rank,
        world_size=world,
    )
    workers = recipe["data"]["num_workers"]
    # Its own generator: creating the loader's iterator would otherwise draw from the global RNG, which a
    # resumed run does at a different moment than an uninterrupted one.
    return torch.utils.data.DataLoader(
        SeededSamples(dataset, seed),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def run_evaluation(
    model: torch.nn.Module, dataset: CocoDetection, recipe: dict, device: torch.device, out_dir: Path
) -> dict:
    """COCO box and mask AP of ``model`` on ``dataset`` (each rank scores its share; results are gathered)."""
    e = recipe["eval"]
    indices = list(range(len(dataset)))[: e["max_images"] or None]
    shard = indices[du.rank() :: du.world_size()]
    evaluator = COCOEvaluator(dataset.annotation_file, dataset.label_to_category)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=e["batch_size"], collate_fn=collate, num_workers=0
    )
    was_training = model.training
    model.eval()
    amp = _amp(recipe, device)
    with torch.no_grad():
        for images, targets in loader:
            images = [im.to(device) for im in images]
            ctx = (
                torch.autocast(device.type, dtype=torch.bfloat16)
                if amp == "bf16"
                else torch.autocast(device.type, enabled=False)
            )
            with ctx:
                outputs = model(images)
            evaluator.process(targets, outputs)
    model.train(was_training)
    evaluator.gather()
    if du.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        result = evaluator.evaluate(out_dir)
    else:
        result = None
    return du.broadcast_object(result)


def _tide(run_dir: Path) -> None:
    try:
        from vitinit.analysis.tide import analyze_run
    except ImportError:
        return
    try:
        analyze_run(run_dir)
    except Exception as e:  # the analysis is a bonus; a failure there must not fail a finished run
        log.warning("TIDE analysis skipped: %s", e)


# --- entry points --------------------------------------------------------------------------------------


def resolve(name: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The fully resolved recipe as plain data (what ``--dry-run`` prints and ``recipe.yaml`` holds)."""
    return to_plain(load_recipe(name, overrides))


def run_bench(
    name: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    num_processes: int = 1,
    progress: bool = True,
) -> dict:
    """Run a benchmark; returns the content of ``results.json``.

    Args:
        name: a bundled recipe name (``mae-vitb``, ``demo``) or a recipe file; None with ``resume`` and
            ``output_dir`` continues that run with its saved recipe.
        overrides: dotted ``key=value`` pairs.
        output_dir: the run folder (default ``runs/NAME/<timestamp>``).
        resume: continue from ``RUN_DIR/checkpoints/last.pth`` with the run's own ``recipe.yaml``.
        num_processes: launch this many local processes (one per GPU, or CPU processes on gloo) unless this
            process is already part of a torchrun job.

    Example:
        >>> results = run_bench("demo")  # doctest: +SKIP
        >>> results["final"]["bbox"]["AP"]  # doctest: +SKIP
    """
    if resume and output_dir is not None and (Path(output_dir) / "recipe.yaml").is_file():
        recipe = to_plain(OmegaConf.load(Path(output_dir) / "recipe.yaml"))  # type: ignore[arg-type]
        if overrides:
            raise ConfigError("a resumed run keeps its recipe; drop the key=value overrides")
    elif name is None:
        raise ConfigError("name a recipe (or --resume an existing --output-dir)")
    else:
        recipe = resolve(name, overrides)
    run_dir = Path(output_dir) if output_dir is not None else default_run_dir(recipe["name"], resume=resume)
    if not resume and (run_dir / "checkpoints" / "last.pth").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose --output-dir"
        )
    already_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if num_processes > 1 and not already_distributed:
        out = du.launch(
            train_worker,
            num_processes,
            recipe,
            str(run_dir),
            resume,
            progress,
            run_id=f"vitinit-{os.getpid()}",
        )
        return out[0]
    return train_worker(recipe, run_dir, resume, progress)


def load_run_recipe(run_dir: str | Path) -> DictConfig:
    return OmegaConf.load(Path(run_dir) / "recipe.yaml")  # type: ignore[return-value]
