"""One process of a benchmark run: build the data and the Mask R-CNN, train, evaluate, write the run folder.

``train_worker`` is what every rank runs (a local run, each process of ``--gpus N``, each Slurm task).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch

from vitinit.analysis.live_gallery import TensorBoardGallery
from vitinit.analysis.run_report import write_run_report
from vitinit.bench.datasets import build_datasets
from vitinit.bench.plan import batch_plan
from vitinit.bench.weights import apply_position_policy, load_weights
from vitinit.data.coco import CocoDetection, collate
from vitinit.engine import distributed as du
from vitinit.engine import hooks as H
from vitinit.engine.checkpoint import check_same_model
from vitinit.engine.optim import build_optimizer
from vitinit.engine.run_folder import RunFolder
from vitinit.engine.sampler import SeededSamples, StreamSampler
from vitinit.engine.tracking import WandbTracker, check_loggers
from vitinit.engine.trainer import Trainer
from vitinit.errors import ConfigError
from vitinit.evaluation.coco import COCOEvaluator
from vitinit.evaluation.inference import inference_on_dataset
from vitinit.modeling.mask_rcnn import build_mask_rcnn, convert_sync_batchnorm
from vitinit.modeling.vit import ViTBackboneConfig, load_backbone_state
from vitinit.recipes import RecipeLike, as_recipe
from vitinit.recipes.schema import Recipe

log = logging.getLogger(__name__)


def build_model(
    recipe: RecipeLike, backbone: ViTBackboneConfig, num_classes: int, input_norm: dict | None = None
) -> torch.nn.Module:
    """The recipe's Mask R-CNN around ``backbone`` (see ``Recipe.detector_config``); ``input_norm``: the
    weights' recorded mean/std, used where the recipe leaves ``model.pixel_mean/std`` null."""
    return build_mask_rcnn(as_recipe(recipe).detector_config(backbone, num_classes, input_norm))


def build_initialized_model(recipe: Recipe, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The recipe's Mask R-CNN with its backbone weights loaded and its position policy applied, as a run
    starts; returns it (on the CPU) and the weights' provenance (``weights.json``, with the input
    normalisation used under ``pixel_norm_used`` and the backbone's architecture under
    ``backbone_config``)."""
    backbone, state, provenance = load_weights(recipe)
    backbone = backbone.replace(attention=recipe.model.attention)  # a run-time choice
    mean, std, which = recipe.input_norm(provenance.get("input_norm"))
    provenance = {
        **provenance,
        "pixel_norm_used": {"mean": list(mean), "std": list(std), "from": which},
        # The architecture, so that `vitinit eval` / `predict` rebuild the model without the source weights.
        "backbone_config": json.loads(backbone.to_json()),
    }
    model = build_model(recipe, backbone, num_classes, provenance.get("input_norm"))
    if state is not None:
        load_backbone_state(model.backbone.vit, state)
    vit = getattr(model.backbone, "vit", None)  # None for the ResNet baseline (model.detector.backbone_type)
    changed = apply_position_policy(vit, recipe) if vit is not None else []
    if changed:
        provenance = {**provenance, "position_policy": changed}
    return model, provenance


def device_for(recipe: Recipe, device: torch.device) -> torch.device:
    want = recipe.train.device
    if want == "cpu":
        return torch.device("cpu")
    if want == "cuda" and device.type != "cuda":
        raise ConfigError("train.device=cuda but CUDA is not available")
    return device


def _amp(recipe: Recipe, device: torch.device) -> str | None:
    amp = recipe.train.amp
    if amp == "auto":
        return "bf16" if device.type == "cuda" else None
    return None if amp in (None, "none", False) else amp


def train_worker(
    recipe: RecipeLike, run_dir: str | Path, resume: bool = False, progress: bool = True
) -> dict:
    """Train and evaluate ``recipe`` in this process (one rank of a run when ``WORLD_SIZE`` is set)."""
    # A library caller's hand-made recipe fails here, before any data is indexed; a Recipe passes as is.
    recipe = as_recipe(recipe)
    run_dir = Path(run_dir)
    device = device_for(recipe, du.init_distributed())
    world, rank = du.world_size(), du.rank()
    if device.type == "cpu" and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    try:
        return _train(recipe, run_dir, device, resume=resume, progress=progress, world=world, rank=rank)
    finally:
        du.destroy_distributed()


def _train(
    recipe: Recipe, run_dir: Path, device: torch.device, *, resume: bool, progress: bool, world: int,
    rank: int,
) -> dict:
    main = rank == 0
    seed = recipe.train.seed
    check_loggers(recipe.train.loggers)  # a missing optional tracker fails before any data is indexed
    data = build_datasets(recipe)
    torch.manual_seed(seed)  # same fresh weights on every rank
    model, provenance = build_initialized_model(recipe, data.train.num_classes)
    if main:
        used = provenance["pixel_norm_used"]
        log.info("input normalisation: mean %s std %s, %s", used["mean"], used["std"], used["from"])
    vit = getattr(model.backbone, "vit", None)  # None for the ResNet baseline
    model = convert_sync_batchnorm(model, device).to(device)
    # Same weights everywhere (seeded above); from here each rank draws its own stream for drop path and
    # RPN/RoI sampling, as detectron2 seeds seed + rank.
    du.seed_everything(seed)
    folder = RunFolder(run_dir)
    resumed = H.restore_rng(folder.load_checkpoint()) if resume else None
    if resumed is not None:  # another size or recipe: refused before anything in the folder changes
        run = f"the run's recipe {recipe.name} ({recipe.model.variant})"
        check_same_model(resumed, model, checkpoint=folder.last_checkpoint, run=run)
    if main:
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_weights(provenance)
        folder.write_recipe(recipe)

    o, s, t = recipe.optim, recipe.schedule, recipe.train
    optimizer = build_optimizer(
        model, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas, layer_decay=o.layer_decay,
        optimizer=o.optimizer, momentum=o.momentum,
    )
    ddp_model = model
    if world > 1:
        # All blocks windowed or all global: one of the two shared rel-pos tables is then unused.
        blocks = set(vit.config.global_block_indexes) if vit is not None else set()
        unused = vit is not None and (not blocks or len(blocks) == vit.config.depth)
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )
        du.register_grad_compression(ddp_model, t.grad_compression)
    # train.batch_size is the global batch: micro-batches per GPU × accumulation steps × processes.
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    images_per_gpu, accumulation = batch_plan(recipe, world, memory)  # the model size's memory per image
    if main:
        log.info("%d images per process × %d accumulation steps × %d processes", images_per_gpu, accumulation,
                 world)

    lr_hook = H.LRSchedule(
        warmup_iters=s.warmup_iters,
        warmup_factor=s.warmup_factor,
        policy=s.policy,
        milestones=tuple(s.milestones),
        gamma=s.gamma,
    )
    trackers = (
        [WandbTracker(run_dir, recipe.name, recipe.to_dict(), [recipe.weights.init, recipe.model.variant])]
        if main and "wandb" in t.loggers
        else []
    )
    metrics = H.MetricsWriter(
        folder.metrics,
        t.log_period,
        lr_hook=lr_hook,
        tensorboard=folder.tensorboard if "tensorboard" in t.loggers else False,
        trackers=trackers,
    )
    tb_gallery = TensorBoardGallery(lambda: metrics.tb, data.val.annotation_file, data.val.image_dir)
    epoch_of = lambda it: round(it * t.batch_size / recipe.data.epoch_images, 4)  # noqa: E731

    def evaluate(iteration: int) -> dict:
        result = run_evaluation(model, data.val, recipe, device, folder.eval_dir(iteration))
        entry = {"kind": "eval", "iter": iteration, "epoch": epoch_of(iteration), **result}
        if main:
            folder.write_eval(entry)
            metrics.write(entry)
            tb_gallery(iteration, folder.eval_dir(iteration))  # when TensorBoard is installed
            folder.write_results(recipe, [*eval_hook.history, entry], "running", data.val.annotation_file)
        return entry

    eval_hook = H.Evaluate(evaluate, recipe.eval.period or 0, at_start=recipe.eval.at_start)
    checkpoint = H.Checkpoint(folder.checkpoints, t.checkpoint_period)
    trainer = Trainer(
        ddp_model,
        optimizer,
        None,
        max_iter=s.iters,
        device=device,
        amp=_amp(recipe, device),
        clip_grad_norm=o.clip_grad_norm,
        accumulation_steps=accumulation,
        hooks=[
            lr_hook,
            eval_hook,
            checkpoint,
            metrics,
            H.Progress(lr_hook=lr_hook, enabled=progress, description=recipe.name),
        ],
    )
    if resumed is not None:
        trainer.load_state_dict(resumed)
        log.info("resuming %s at iteration %d", run_dir, trainer.start_iter)
    trainer.data = _train_loader(data.train, recipe, trainer.start_iter, rank, world, accumulation)
    try:
        trainer.train()
    except BaseException as err:
        if main:
            msg = " ".join(str(err).split()) or type(err).__name__
            folder.write_results(recipe, eval_hook.history, "failed", data.val.annotation_file, error=msg)
        raise
    results = (
        folder.write_results(recipe, eval_hook.history, "finished", data.val.annotation_file)
        if main
        else {}
    )
    if main and importlib.util.find_spec("tidecv") is not None:
        _tide(run_dir)
    if main:  # the run's own report and gallery (vitinit.analysis.run_report), then where to find them
        write_run_report(run_dir, image_dir=data.val.image_dir, model=model, size=recipe.data.image_size)
        results = {**results, "run_dir": str(run_dir.resolve())}
    return results


def _train_loader(
    dataset: CocoDetection, recipe: Recipe, start_iter: int, rank: int, world: int, accumulation: int = 1
) -> torch.utils.data.DataLoader:
    seed = recipe.train.seed
    sampler = StreamSampler(
        len(dataset),
        batch_size=recipe.train.batch_size,
        seed=seed,
        start_iter=start_iter,
        rank=rank,
        world_size=world,
        accumulation_steps=accumulation,
    )
    workers = recipe.data.num_workers
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
    model: torch.nn.Module, dataset: CocoDetection, recipe: RecipeLike, device: torch.device, out_dir: Path
) -> dict:
    """COCO box and mask AP of ``model`` on ``dataset`` (each rank scores its share; results are gathered)."""
    e = as_recipe(recipe).eval
    evaluator = COCOEvaluator(dataset.annotation_file, dataset.label_to_category)
    inference_on_dataset(
        model, dataset, evaluator, device=device, collate_fn=collate,
        indices=range(min(len(dataset), e.max_images or len(dataset))),
        batch_size=e.batch_size, num_workers=e.num_workers,
        amp=None if e.amp == "none" else e.amp,  # float32 unless eval.amp asks (detectron2's do_test)
    )
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

