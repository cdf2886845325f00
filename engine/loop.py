"""The training loop: one model job, from its first (or resumed) iteration to its last.

It keeps the reference's structure — epochs over one re-iterated DataLoader, evaluation
inside the loop — because creating DataLoader iterators and evaluating draw from the CPU
random generator: the same structure keeps a run RNG-identical to the reference's
`dinomaly_*.py`. Each iteration, in order:

    lr → forward → loss → backward → clip → step   (engine.step.train_step)
    → watch the loss → evaluate / checkpoint → log

Resuming (`--resume`: `ModelTraining.resume_from`, `epoch_batches`) and going back to the
last checkpoint after a loss spike (`--spike_restart`: `ModelTraining.restart`) sit in
small helpers around that loop.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from engine import distributed, training_state
from engine.config import RunConfig
from engine.data import build_datasets, make_train_loader
from engine.errors import RunError, Stop, stop
from engine.evaluation import EvalSettings, evaluate
from engine.generators import cuda_generator_plan, setup_seed
from engine.jobs import ModelJob
from engine.report import Report
from engine.run_folder import save_model
from engine.spike_guard import NonFiniteLoss, SpikeGuard
from engine.step import Training, setup_training, train_step
from recipes import Recipe

Log = Callable[[str], None]


@dataclass
class RunStatus:
    """How far a run got, kept up to date by the loop: what the message says when the run
    stops early (Ctrl-C, a full disk), and whether its folder is kept (`started`)."""

    started: bool = False  # a training step is done (or, --eval_only, results are written)
    # of the model in training:
    iteration: int = 0  # iterations done
    name: str | None = None  # its class, class-separated
    checkpoint: Path | None = None  # its last checkpoint.pth, written or resumed from
    saved_at: int | None = None  # that checkpoint's iteration
    evaluated: bool = False  # an evaluation of it is saved (model.pth, results.csv)

    def new_model(self, name: str | None) -> None:
        """A model starts training (class-separated: the next class): nothing of it yet."""
        self.iteration, self.name = 0, name
        self.checkpoint, self.saved_at, self.evaluated = None, None, False

    def saved(self, path: Path, iteration: int) -> None:
        self.checkpoint, self.saved_at = path, iteration


class _Restart(Exception):
    """Raised inside the loop: go back to the last checkpoint with a new seed."""


@dataclass
class RunContext:
    """What every model job of a run shares."""
    cfg: RunConfig
    recipe: Recipe
    device: torch.device
    log: Log
    report: Report  # rank 0's writer (the other ranks' writes nothing)
    status: RunStatus
    evaluation: EvalSettings

    def make_pipeline(self, model: torch.nn.Module) -> Callable[[], torch.nn.Module]:
        """Builds the method's evaluation pipeline around `model`, one per class."""
        return lambda: self.recipe.pipeline(model, self.cfg)


def train(job: ModelJob, run: RunContext) -> dict[str, list[float]]:
    """Train the job's model on the union of its classes (the reference's loop); evaluate
    and save `model.pth` in its folder every `eval_every` iterations and at the end, each
    time with `checkpoint.pth` (also every `checkpoint_every`); `job.resume`: continue from
    that checkpoint. Heatmaps at the final evaluation with `--save_maps`. `run.status`
    follows the iterations and checkpoints (for the message if the run stops).
    Returns the last evaluation's metrics per class (on rank 0; {} on the other ranks, which
    train on their share of each batch, compute their share of each evaluation's maps and
    wait while rank 0 computes the metrics and saves)."""
    cfg, status = run.cfg, run.status
    status.new_model(job.label)
    ckpt_path = job.folder / training_state.CHECKPOINT_NAME
    state = checkpoint_to_resume(job, ckpt_path, status)
    if state is not None and state["finished"]:
        run.log(f"{ckpt_path}: trained to the end (iteration {state['iteration']}), "
                "nothing to resume")
        return state["results"]
    setup_seed(cfg.seed, cudnn_benchmark=cfg.cudnn_benchmark)
    train_set, test_sets = build_datasets(cfg, job.classes, cache_images=cfg.cache_images)
    loader = make_train_loader(cfg, train_set)
    if len(loader) == 0:
        raise RunError(f"--batch_size {cfg.batch_size} is larger than the training set "
                       f"({len(train_set)} images): no full batch to train on.")
    training = ModelTraining(job, run, setup_training(cfg, run.device, run.recipe), loader,
                             test_sets)
    run.log(f"train image number:{len(train_set)}")
    if state is not None:
        training.resume_from(state)
    elif job.resume:
        run.log(f"no checkpoint in {job.folder}: starting from iteration 0")
    if state is None and cfg.spike_restart:
        training.save_checkpoint()  # a restart before the first evaluation goes back to iteration 0
    # the bar is closed on the way out, also by an error or Ctrl-C (before their message)
    with tqdm(total=cfg.total_iters, initial=training.progress.iteration,
              desc=job.label or "train", file=sys.stderr,
              dynamic_ncols=True, disable=distributed.rank() > 0) as bar:
        while True:  # runs once, unless a spike restart goes back to the last checkpoint
            try:
                training.train_to_the_end(bar)
                break
            except (_Restart, NonFiniteLoss) as event:
                training.restart(event, bar)
    return training.results


def checkpoint_to_resume(job: ModelJob, ckpt_path: Path,
                         status: RunStatus) -> dict[str, object] | None:
    """`--resume`: the model's checkpoint, if it has one (`status` then starts from it)."""
    if not (job.resume and ckpt_path.is_file()):
        return None
    state = training_state.load_training_state(ckpt_path)
    status.saved(ckpt_path, int(state["iteration"]))
    status.iteration = int(state["iteration"])
    status.evaluated = bool(state["results"])
    return state


class ModelTraining:
    """One model's training: what the loop carries from one iteration to the next."""

    def __init__(self, job: ModelJob, run: RunContext, t: Training, loader: DataLoader,
                 test_sets: dict[str, Dataset]) -> None:
        self.job, self.run, self.cfg, self.t, self.model = job, run, run.cfg, t, t.model
        self.loader = loader
        self.sampler = loader.batch_sampler  # records each epoch's order, replays it on resume
        self.epochs = math.ceil(self.cfg.total_iters / len(loader))
        self.test_sets = test_sets
        self.device = run.device
        self.ckpt_path = job.folder / training_state.CHECKPOINT_NAME
        self.log, self.status = run.log, run.status
        self.progress = training_state.Progress()
        self.results: dict[str, list[float]] = {}
        self.restarts = 0  # spike restarts so far
        self.guard = SpikeGuard(self.cfg.spike_factor, self.cfg.spike_window,
                                warmup=self.cfg.spike_window)

    def train_to_the_end(self, bar: tqdm) -> None:
        """The iterations from `progress` to the last; raises `_Restart` or `NonFiniteLoss`
        when the loss says to go back."""
        cfg, t = self.cfg, self.t
        it = self.progress.iteration
        self.guard.reset(self.progress.losses)
        recent = self.progress.losses[it - it % cfg.log_every:]  # since the last log line
        for epoch in range(self.progress.epoch, self.epochs):
            self.model.train()
            batches, epoch_losses = self.epoch_batches(epoch, it)
            for batch in batches:
                # lr: set by the scheduler at the previous step (iteration 0: its first value)
                lr = t.optimizer.param_groups[0]["lr"]
                # forward → loss → backward → clip → step (the model's input: the method's)
                images = self.run.recipe.train_images(batch, self.device)
                loss = train_step(t, images, it, cfg)
                it += 1
                epoch_losses.append(loss)
                self.progress.losses.append(loss)
                self.status.iteration, self.status.started = it, True
                # watch the loss: nan stops the run, a spike is logged (both may restart)
                self.watch_loss(it, loss)
                # evaluate and checkpoint (maps split over the ranks; rank 0 scores and saves)
                self.evaluate_and_checkpoint(it, epoch, position=len(epoch_losses))
                # log
                recent.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update()
                if it % cfg.log_every == 0:
                    self.log(f"iter [{it}/{cfg.total_iters}], loss:{np.mean(recent):.4f}, "
                             f"lr:{lr:.2e}")
                    recent = []
                if it == cfg.total_iters:
                    break
            self.log(f"iter [{it}/{cfg.total_iters}], loss:{np.mean(epoch_losses):.4f}")

    def epoch_batches(self, epoch: int, it: int) -> tuple[Iterable, list[float]]:
        """The batches of `epoch` and the losses of its iterations already done: a fresh
        pass over the loader, or, resuming in the middle of the epoch, the rest of its saved
        order (`it` iterations done in all)."""
        p = self.progress
        if epoch != p.epoch or p.epoch_order is None:
            return self.loader, []
        self.sampler.resume(p.epoch_order, p.epoch_position * self.cfg.batch_size, p.epoch_seed)
        # creating the iterator draws a worker seed that the stopped run drew before its
        # checkpoint: undone
        generator_state = torch.get_rng_state()
        batches = iter(self.loader)
        torch.set_rng_state(generator_state)
        return batches, p.losses[it - p.epoch_position:]

    def watch_loss(self, iteration: int, loss: float) -> None:
        """Raise `NonFiniteLoss` for nan/inf; log a spike, and with `--spike_restart` (and
        a restart left) raise `_Restart`."""
        spike = self.guard.check(iteration, loss)
        if spike is None:
            return
        restart = self.cfg.spike_restart and self.restarts < self.cfg.max_restarts
        self.log(spike.message() + ("" if restart or not self.cfg.spike_restart else
                                    f" (no restart left: {self.restarts} done)"))
        if restart:
            raise _Restart()

    def evaluate_and_checkpoint(self, it: int, epoch: int, position: int) -> None:
        """After iteration `it` (the `position`-th batch of `epoch`): evaluate and save every
        `eval_every` iterations and after the last; checkpoint then and every
        `checkpoint_every`."""
        cfg = self.cfg
        final = it == cfg.total_iters
        evaluated = it % cfg.eval_every == 0 or final
        if evaluated:
            # every rank computes the maps of its share of each test set; rank 0 gets them all
            maps_dir = self.run.report.run_dir if final and cfg.save_maps else None
            evaluation = evaluate(self.run.make_pipeline(self.model), self.test_sets,
                                  self.run.evaluation, self.device, maps_dir, self.run.report.draw)
            if distributed.rank() == 0:
                self.results = evaluation.metrics()
                # the model first: results never report a model not on disk
                save_model(self.model, self.job.folder / "model.pth")
                self.run.report.evaluation(evaluation, it, self.job.with_mean)
                self.status.evaluated = True
            distributed.barrier()
            self.model.train()
        if evaluated or (cfg.checkpoint_every and it % cfg.checkpoint_every == 0):
            p = self.progress
            p.iteration, p.epoch = it, epoch
            p.epoch_order, p.epoch_position = self.sampler.order, position
            p.epoch_seed = self.sampler.worker_seed
            p.restarts = self.restarts
            self.save_checkpoint(finished=final)

    def save_checkpoint(self, finished: bool = False) -> None:
        """checkpoint.pth from rank 0, with every rank's generators; at the point where the
        next iteration starts (after the evaluation's random draws)."""
        rng = training_state.all_rng_states(self.device)  # collective: every rank takes part
        if distributed.rank() == 0:
            training_state.save_training_state(
                self.ckpt_path, self.model, self.t.optimizer, self.t.scheduler, self.progress,
                dataclasses.asdict(self.cfg), self.results, rng, self.t.scaler, finished)
        distributed.barrier()
        self.status.saved(self.ckpt_path, self.progress.iteration)

    def resume_from(self, state: dict[str, object]) -> None:
        """`--resume`: weights, optimizer, schedule, progress and generators of `state`."""
        rank, processes = distributed.rank(), distributed.world_size()
        same_processes = len(state["rng"]) == processes
        rng_index = rank if same_processes else 0
        self.progress = training_state.restore_training_state(
            state, self.model, self.t.optimizer, self.t.scheduler, rng_index=rng_index,
            scaler=self.t.scaler, device=self.device)
        if not same_processes and rank > 0:  # rank 0's generators, but own dropout masks
            torch.manual_seed(self.cfg.seed + rank)
        self.results = state["results"]
        self.restarts = self.progress.restarts
        _, gpu_note = cuda_generator_plan(state["rng"][rng_index], self.device)
        self.log(f"resumed from {self.ckpt_path} at iteration {self.progress.iteration}"
                 + ("" if same_processes else f" (saved by {len(state['rng'])} processes, now "
                                              f"{processes}: not bit-identical to an unstopped "
                                              "run)")
                 + (f"; {gpu_note}" if gpu_note else ""))

    def restart(self, event: Exception, bar: tqdm) -> None:
        """After a spike (or a nan, with `--spike_restart`): back to the last checkpoint,
        with fresh generators (seed + restart count). A nan with no restart left stops the
        run."""
        cfg = self.cfg
        if isinstance(event, NonFiniteLoss):
            if not (cfg.spike_restart and self.restarts < cfg.max_restarts):
                stop_on_nan(event, self.ckpt_path, self.status.saved_at, cfg, self.restarts,
                            self.log)
            self.log(str(event))
        self.restarts += 1
        state = training_state.load_training_state(self.ckpt_path)
        self.progress = training_state.restore_training_state(
            state, self.model, self.t.optimizer, self.t.scheduler, rng_index=None,
            scaler=self.t.scaler)
        self.progress.restarts = self.restarts
        self.results = state["results"]
        setup_seed(cfg.seed + self.restarts, cudnn_benchmark=cfg.cudnn_benchmark)
        if distributed.rank() > 0:
            torch.manual_seed(cfg.seed + self.restarts + distributed.rank())
        self.log(f"spike restart {self.restarts}/{cfg.max_restarts}: back to iteration "
                 f"{self.progress.iteration} ({self.ckpt_path}), seed {cfg.seed + self.restarts}")
        bar.n = self.progress.iteration
        bar.refresh()


def stop_on_nan(err: NonFiniteLoss, ckpt_path: Path, saved_at: int | None, cfg: RunConfig,
                restarts: int, log: Log) -> None:
    """Log why the run stops and what is kept, then stop (SystemExit)."""
    if saved_at is None:
        kept = ("no checkpoint was written yet (one is written at every evaluation, or every "
                "--checkpoint_every N iterations)")
    else:
        kept = (f"nothing was saved after it: {ckpt_path} (iteration {saved_at}) is the last "
                "good state; continue with --resume")
        kept += (f" (all {restarts} restarts are used up)" if cfg.spike_restart else
                 "; with --spike_restart, a nan goes back to the checkpoint with a new seed")
    message = f"{err}: training stopped; {kept}"
    log(message)
    if distributed.rank() > 0:
        raise Stop(f"error: {message}", 1)  # rank 0 says it
    raise stop(f"error: {message}", 1)
