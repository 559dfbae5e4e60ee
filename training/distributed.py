"""Training on several processes, GPUs or machines: ``torchrun`` + DistributedDataParallel, in one place.

    torchrun --nproc_per_node=2 -m training classify --dataset italypower --name ip-gru     # one machine
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        --rdzv-id=ip-gru -m training classify --dataset italypower --name ip-gru            # on every machine

A plain ``python -m training …`` run never touches this module's collectives: ``active()`` is False,
``wrap`` returns the module itself and the loop shuffles exactly as before.

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) every process:

* joins the process group (``nccl`` when training on CUDA, each process on ``cuda:LOCAL_RANK``; ``gloo`` on CPU);
* builds the same model from the same seed (DDP also broadcasts rank 0's weights when it wraps it);
* trains on its own shard of every epoch (``shard``: torch's DistributedSampler, reshuffled per epoch
  by ``seed + epoch``, padded so that every rank runs the same number of batches);
* has its gradients averaged by DDP, so every rank holds the same weights after every step.

Rank 0 alone computes the validation loss; ``on_main`` broadcasts it, so every rank takes the same
early-stopping decision from the same number and none is left waiting in a collective. After training
rank 0 evaluates, runs the baselines (1-NN DTW or ETS: up to about a minute), stores the model and writes
the report, while the other ranks wait for it in one barrier at the end of ``session``. That barrier makes
every process, and torchrun's agent on every machine, finish together: without it, the agents of the
other machines would stop waiting for rank 0's after 300 seconds (torchrun's exit barrier) with an error.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from models.device import resolve_device

log = logging.getLogger(__name__)

# How long a rank waits in a collective before giving up. The longest wait in a healthy run is the final
# barrier, while rank 0 runs the baselines (DTW and ETS are capped at under a minute each on one busy
# core, see training.baselines) and stores the model; thirty minutes leaves room for a slow machine.
# A rank that fails does not wait: it skips the barrier and exits, and torchrun stops the others.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def launched() -> bool:
    """True in a process started by torchrun (or anything else that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    """This process's rank: 0 in a plain run."""
    return int(os.environ.get("RANK", 0)) if launched() else 0


def is_main() -> bool:
    """Whether this process prints, reports and stores: rank 0, or a plain run."""
    return rank() == 0


def world_size() -> int:
    """Processes training this model: 1 in a plain run."""
    return int(os.environ.get("WORLD_SIZE", 1)) if launched() else 1


def active() -> bool:
    """Whether a process group is up (a torchrun launch inside ``session``)."""
    return dist.is_available() and dist.is_initialized()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, each process of a machine takes its own GPU (``cuda:LOCAL_RANK``); CPU stays CPU."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@contextmanager
def session(device_spec: str) -> Iterator[None]:
    """Join torchrun's process group for the ``with`` block and leave it afterwards; nothing in a plain run.

    The backend follows the device the run trains on: ``nccl`` for CUDA, ``gloo`` for CPU.
    """
    if not launched():
        yield
        return
    device = local_device(resolve_device(device_spec))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before init: NCCL binds each rank to the current device
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    if is_main():
        log.info("distributed: %d processes, backend %s", dist.get_world_size(), backend)
    try:
        yield
        dist.barrier()  # the other ranks wait here for rank 0's evaluation, baselines and storing
    finally:
        dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel when a process group is up, else ``module`` itself.

    ``forward_sync_buffers=False``: the only buffers are normalisation statistics set before training and
    never updated (DDP still copies rank 0's at wrap time), so syncing them before every forward pass
    would be a collective for nothing.
    """
    if not active():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def shard_size(n: int) -> int:
    """Rows each rank sees per epoch: all of them in a plain run, else ``ceil(n / world size)``."""
    return -(-n // dist.get_world_size()) if active() else n


def shard(n: int, epoch: int, seed: int) -> np.ndarray:
    """This rank's rows of epoch ``epoch``: a fresh shuffle of ``range(n)`` per epoch, the same on every rank
    for the same seed, cut into disjoint shards. The sampler pads the last shard with rows from the start of
    the shuffle, so every rank gets ``shard_size(n)`` rows and runs the same number of batches."""
    sampler = DistributedSampler(range(n), num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                 shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return np.fromiter(sampler, dtype=np.int64, count=len(sampler))


def mean(value: float, device: torch.device) -> float:
    """The mean of ``value`` over every rank (``value`` itself in a plain run): every rank must call it."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def on_main(compute: Callable[[], float], device: torch.device) -> float:
    """``compute()`` on rank 0 only, its result handed to every rank (a broadcast every rank must reach).

    The early-stopping decision is taken from this one number, so every rank decides the same way.
    """
    if not active():
        return compute()
    tensor = torch.tensor([compute() if is_main() else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())
