"""The training loop shared by both tasks: AdamW, one-cycle schedule, gradient clipping, early stopping.

A task supplies ``make_batch(indices) -> batch`` and ``loss_fn(model, batch) -> scalar``; the loop
knows nothing about classification or forecasting. Without validation rows it runs the whole
schedule and keeps the last epoch (the one-cycle schedule has annealed the learning rate to ~0 by then).
Progress is a tqdm bar on a terminal, else (``log_every`` seconds) a plain INFO line per interval.
Under torchrun the same loop trains with DistributedDataParallel; ``training.distributed`` holds every
piece of that (the shard of each epoch, the wrapper, the values every rank must agree on).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training import distributed

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings. ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``patience``, ``clip_norm``
    and ``seed`` have CLI flags of the same name; ``max_batches`` is set by ``--dry-run``, ``progress`` and
    ``log_every`` by ``--quiet`` and the terminal; ``min_delta`` has no flag."""

    epochs: int | None = 150  # None: sized to the data by sized_for()
    batch_size: int | None = 32  # None: sized to the data by sized_for()
    lr: float = 3e-3
    weight_decay: float = 1e-2
    patience: int | None = 25  # epochs without a better validation loss before stopping; None: epochs // 4
    min_delta: float = 1e-4  # smaller improvements do not count as better (a solved task stops early)
    clip_norm: float = 1.0
    seed: int = 0
    max_batches: int | None = None  # per epoch; set by --dry-run
    progress: bool = True  # a tqdm bar (terminals)
    log_every: float = 0.0  # seconds between plain progress lines (logger training.loop, INFO); 0: none


@dataclass
class History:
    """What happened during training, stored in the model card and plotted in the report."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    seconds: float = 0.0
    processes: int = 1  # torchrun processes that trained together (the batch size is per process)

    def summary(self) -> dict[str, Any]:
        return {
            "epochs_run": len(self.train_loss),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss if self.val_loss else None,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 2),
            "seconds_per_epoch": round(self.seconds / max(1, len(self.train_loss)), 3),
            "processes": self.processes,
        }


def sized_for(config: TrainConfig, n_train: int, target_steps: int = 1500, min_epochs: int = 20) -> TrainConfig:
    """Fill the settings left as None from the amount of data.

    The batch gives at least ~16 steps an epoch (8 to 64 windows), and epochs add up to about
    ``target_steps`` optimiser steps (``min_epochs`` to 300 epochs). On 144 monthly airline points (66 windows)
    that is batch 8 for 200 epochs; on 2,284 weekly CO2 points (1,536 windows) batch 64 for 63.
    """
    batch = config.batch_size or int(np.clip(n_train // 16, 8, 64))
    epochs = config.epochs or int(np.clip(target_steps // max(1, -(-n_train // batch)), min_epochs, 300))
    return dataclasses.replace(config, batch_size=batch, epochs=epochs, patience=config.patience or max(10, epochs // 4))


# The one-cycle schedule with torch's OneCycleLR defaults: the rate rises from peak / 25 over the first 10% of
# the steps, then falls to peak / 25e4 at the last one, while Adam's beta1 falls from 0.95 to 0.85 and back.
WARMUP = 0.1
START_DIV, END_DIV = 25.0, 1e4
BETA1_HIGH, BETA1_LOW = 0.95, 0.85


def one_cycle(step: int, total: int, peak_lr: float) -> tuple[float, float]:
    """The learning rate and Adam's beta1 for optimiser step ``step`` (0-based) of ``total`` (any total ≥ 1).

    These are the values of ``torch.optim.lr_scheduler.OneCycleLR(pct_start=0.1)`` (the same floats from 11
    steps on), with the peak at step ``max(0.1 * total - 1, 0)``. OneCycleLR puts it at ``0.1 * total - 1``
    even below step 0: at 10 steps its warm-up spans no step and it divides by zero, and a run of one step
    gets the final rate (~0) and does not train. Here a run of up to 10 steps starts at the peak and falls.
    """
    peak = max(WARMUP * total - 1, 0.0)  # the step where the rise ends (or a point between two steps)
    start_lr = peak_lr / START_DIV
    if step < peak:
        pct = step / peak
        return _cosine(start_lr, peak_lr, pct), _cosine(BETA1_HIGH, BETA1_LOW, pct)
    pct = (step - peak) / max(total - 1 - peak, 1)  # a run of one step stays at the peak
    return _cosine(peak_lr, start_lr / END_DIV, pct), _cosine(BETA1_LOW, BETA1_HIGH, pct)


def _cosine(start: float, end: float, pct: float) -> float:
    """From ``start`` (pct 0) to ``end`` (pct 1) along half a cosine, as OneCycleLR computes it."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def seed_everything(seed: int) -> None:
    """Make a CPU run repeatable: same seed, same data order, same weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    model: nn.Module,
    n_train: int,
    n_val: int,
    make_batch: Callable[[np.ndarray, bool], Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    config: TrainConfig,
    label: str = "",
) -> History:
    """Train ``model`` in place and leave it holding the weights of its best validation epoch (0: as it started).

    ``make_batch(indices, is_train)`` builds a batch from training (``is_train``) or validation rows.
    ``label`` starts its log lines (which network of several this is).
    Under torchrun each rank trains on its shard of every epoch and holds the same weights as the others
    after every step; rank 0's validation loss decides for all of them (see ``training.distributed``).
    """
    # Gradients that vanish back through hundreds of recurrent steps become subnormal floats, which x86 CPUs
    # compute tens of times slower than normal ones: one step of a GRU forecaster over 338 steps took 0.80 s
    # with them and 0.19 s flushed to zero. They are below 1e-38, too small for any update to feel.
    torch.set_flush_denormal(True)
    rng = np.random.default_rng(config.seed)
    device = next(model.parameters()).device
    trainee = distributed.wrap(_Loss(model, loss_fn), device)  # DDP sees the whole loss computation
    steps_per_epoch = _count_batches(distributed.shard_size(n_train), config)
    total_steps = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = History(processes=distributed.world_size())
    best_state = copy.deepcopy(model.state_dict()) if n_val else None
    if n_val:
        # Epoch 0 is the untrained model: a forecaster starts as its baseline, and if no epoch beats
        # that on validation, the baseline is what is kept (best_epoch 0), not the least bad epoch.
        history.best_val_loss = evaluate_loss(model, n_val, make_batch, loss_fn, config)
    started = time.perf_counter()
    bar = tqdm(range(config.epochs), desc=label or "training", unit="epoch", disable=not config.progress, leave=False)
    prefix = f"{label}: " if label else ""
    last_line = started
    for epoch in bar:
        model.train()
        losses = []
        order = distributed.shard(n_train, epoch, config.seed) if distributed.active() else rng.permutation(n_train)
        for i, indices in enumerate(_batches(order, config)[:steps_per_epoch]):
            loss = trainee(make_batch(indices, True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            lr, beta1 = one_cycle(epoch * steps_per_epoch + i, total_steps, config.lr)
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = lr, (beta1, group["betas"][1])
            optimizer.step()
            losses.append(loss.item())
        history.train_loss.append(distributed.mean(float(np.mean(losses)), device))
        if n_val:
            history.val_loss.append(evaluate_loss(model, n_val, make_batch, loss_fn, config))
            if history.val_loss[-1] < history.best_val_loss - config.min_delta:
                history.best_val_loss, history.best_epoch = history.val_loss[-1], epoch + 1
                best_state = copy.deepcopy(model.state_dict())
        else:
            history.best_epoch = epoch + 1
        val = f"{history.val_loss[-1]:.4f}" if n_val else "-"
        bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", val=val, best=history.best_epoch)
        now = time.perf_counter()
        if config.log_every and (now - last_line >= config.log_every or epoch + 1 == config.epochs):
            last_line = now
            log.info("%sepoch %d/%d loss %.4f val %s best epoch %d (%.0fs)", prefix, epoch + 1, config.epochs,
                     history.train_loss[-1], val, history.best_epoch, now - started)
        if n_val and epoch + 1 - history.best_epoch >= config.patience:
            history.stopped_early = True
            break
    bar.close()
    if n_val:
        model.load_state_dict(best_state)
    history.seconds = time.perf_counter() - started
    log.info("%strained %d epochs in %.1fs; best epoch %d", prefix, len(history.train_loss), history.seconds, history.best_epoch)
    return history


class _Loss(nn.Module):
    """A model and its task's loss as one module: ``forward(batch)`` is ``loss_fn(model, batch)``.

    DistributedDataParallel averages gradients only for what runs inside its own forward pass, and a
    task's loss may call other methods of the model than ``forward`` (the forecaster's loss works in
    normalised units), so it wraps this rather than the model.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def evaluate_loss(model, n_val, make_batch, loss_fn, config: TrainConfig) -> float:
    """Mean validation loss, weighted by batch size.

    Under torchrun rank 0 computes it and every rank receives that one number, so every rank takes the
    same early-stopping decision (every rank must call this, as for any collective).
    """
    device = next(model.parameters()).device
    return distributed.on_main(lambda: _mean_loss(model, n_val, make_batch, loss_fn, config), device)


@torch.no_grad()
def _mean_loss(model, n_val, make_batch, loss_fn, config: TrainConfig) -> float:
    model.eval()
    total, count = 0.0, 0
    for indices in _batches(np.arange(n_val), config):
        total += loss_fn(model, make_batch(indices, False)).item() * len(indices)
        count += len(indices)
    return total / max(count, 1)


def _batches(order: np.ndarray, config: TrainConfig) -> list[np.ndarray]:
    return [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]


def _count_batches(n: int, config: TrainConfig) -> int:
    full = -(-n // config.batch_size)
    return min(full, config.max_batches) if config.max_batches else full
