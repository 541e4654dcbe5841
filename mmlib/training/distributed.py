"""One model on many devices: PyTorch DistributedDataParallel under ``torchrun``, through the one Trainer.

``python -m mmlib.fit`` calls ``init_from_env()`` when ``torchrun`` started it (``WORLD_SIZE`` > 1):
the process group comes up with ``nccl`` on GPUs (one per local rank) or ``gloo`` on CPU. From
then on every ``Trainer`` of the process sees ``current()`` and

- wraps its model in ``DistributedDataParallel`` for the training steps (gradients are
  all-reduced, i.e. averaged over the ranks, before clipping and the optimizer step);
- gives every rank its contiguous shard of each global batch (``batch_size`` stays the global
  batch: all ranks draw the same shuffled order from the same seed, each keeps its slice of the
  in-memory tensors);
- lets rank 0 decide early stopping and broadcasts the decision (``DistributedSync``);
- writes checkpoints on rank 0 only (every rank may resume from them).

Validation runs on each rank's identical copy of the model. BatchNorm statistics stay per rank
on CPU (``gloo``); on GPUs they are synchronised (``SyncBatchNorm``). OGM-GE modulates
gradients per rank and is refused under DDP.
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from mmlib.training.callbacks import Callback
from mmlib.training.checkpoint import Checkpointing
from mmlib.utils import MMLibError


class DistContext:
    """This process's place in the process group, and the few collective steps the Trainer needs."""

    def __init__(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.backend = str(dist.get_backend())
        self.shard_rows = 0  # the most rows one of this rank's shards held (what a record reports)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device, config: Any) -> nn.Module:
        """``model`` in DDP (the module itself stays the Trainer's ``model``)."""
        if config.ogm_alpha is not None:
            raise MMLibError("OGM-GE (ogm_alpha) modulates each rank's gradients after they are all-reduced and "
                             "would let the ranks' weights drift apart; train it in one process.")
        # static graph: a model whose forward leaves some parameters out of the loss (unimodal heads
        # without aux_weight) trains without find_unused_parameters' extra pass over the graph
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0], static_graph=True)
        return nn.parallel.DistributedDataParallel(model, static_graph=True)

    def shard(self, batch: dict[str, Any]) -> dict[str, Any]:
        """This rank's contiguous slice of a global batch (views, no copy). A batch smaller than
        the world gives each rank one row (repeated), so that every rank takes a step."""
        n = len(batch["y"])
        per = -(-n // self.world_size)
        start = self.rank * per
        start, stop = (start, min(start + per, n)) if start < n else (self.rank % n, self.rank % n + 1)
        self.shard_rows = max(self.shard_rows, stop - start)
        return _slice(batch, start, stop, n)

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every rank."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int64,
                         device=torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else "cpu")
        dist.broadcast(t, src=0)
        return bool(t.item())

    def barrier(self) -> None:
        dist.barrier()


def _slice(obj: Any, start: int, stop: int, n: int) -> Any:
    if isinstance(obj, torch.Tensor) and obj.ndim and obj.shape[0] == n:
        return obj[start:stop]
    if isinstance(obj, dict):
        return {k: _slice(v, start, stop, n) for k, v in obj.items()}
    return obj


class DistributedSync(Callback):
    """After early stopping has looked at the epoch: every rank stops when rank 0 says so."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        stop = self.ctx.broadcast_flag(trainer.stop)
        trainer.stop = stop
        trainer.early_stopping.stopped_early = stop and row["epoch"] < trainer.config.epochs


class ResumeOnlyCheckpointing(Checkpointing):
    """Checkpointing on ranks other than 0: resume from rank 0's file, never write it."""

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        return None


def current() -> DistContext | None:
    """The process group's context when one of more than one process is up, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    global _CTX
    if _CTX is None:
        _CTX = DistContext()
    return _CTX


_CTX: DistContext | None = None


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None = None, timeout_s: float = 600) -> DistContext | None:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...);
    None when this process was not started by torchrun with more than one process."""
    if not launched_by_torchrun():
        return None
    if not dist.is_available():
        raise MMLibError("torch.distributed is not available in this build of PyTorch.")
    gpu = torch.cuda.is_available()
    backend = backend or ("nccl" if gpu else "gloo")
    if backend == "nccl":
        if not gpu:
            raise MMLibError("backend 'nccl' needs CUDA GPUs; use --backend gloo on CPU.")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def device_for(ctx: DistContext | None, requested: str) -> str:
    """The device of this rank: its own GPU under nccl, else what was asked for."""
    if ctx is not None and ctx.backend == "nccl" and requested in ("auto", "cuda"):
        return f"cuda:{torch.cuda.current_device()}"
    return requested


def shutdown() -> None:
    global _CTX
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CTX = None


def rank() -> int:
    ctx = current()
    return 0 if ctx is None else ctx.rank


__all__ = ["DistContext", "DistributedSync", "ResumeOnlyCheckpointing", "current", "init_from_env", "device_for",
           "launched_by_torchrun", "shutdown", "rank"]
