"""Checkpoints: after every epoch the whole run (model, optimizer, schedule, scaler,
every RNG, history, early-stopping state) is written atomically; a killed run resumes
from it with exactly the same numbers on CPU. The model's and the training settings are
saved beside the weights, so a checkpoint explains itself and a mismatched resume is refused."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmlib.training.callbacks import Callback
from mmlib.training.config import _RESUME_FREE, CHECKPOINT_VERSION
from mmlib.utils import MMLibError, atomic_write_bytes


def _canonical(obj: Any) -> str:
    """A comparable text form of a config (tuples vs lists, key order do not matter)."""
    return json.dumps(obj, sort_keys=True, default=str)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``Trainer`` (on the CPU), with a clear error when it can't be read."""
    path = Path(path)
    if not path.exists():
        raise MMLibError(f"Checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise MMLibError(f"Could not read checkpoint {path} ({type(exc).__name__}: {exc}); delete it or "
                         "start without resume.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise MMLibError(f"{path} is not an mmlib training checkpoint (version {CHECKPOINT_VERSION}); delete it or "
                         "choose another checkpoint_path.")
    return ckpt


class Checkpointing(Callback):
    """Save after every epoch to ``path``; with ``resume``, continue from it when it exists."""

    def __init__(self, path: str, resume: bool = False):
        self.path, self.resume = path, bool(resume)

    def on_fit_start(self, trainer: Any) -> None:
        if self.resume and Path(self.path).exists():
            self.restore(trainer, load_checkpoint(self.path))

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        cfg = trainer.config
        ckpt = {
            "version": CHECKPOINT_VERSION,
            "epoch": int(row["epoch"]),
            "objective": trainer.objective.kind,
            "config": cfg.to_dict(),
            "model_config": getattr(trainer.model, "config", {}),
            "model_state": trainer.model.state_dict(),
            "optimizer_state": trainer.optimizer.state_dict(),
            "scheduler_state": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            "scaler_state": trainer.precision.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "shuffle": trainer.shuffle_gen.get_state(),
            },
            "history": list(trainer.history),
            "best": trainer.early_stopping.state(),
            "train_time_s": trainer.elapsed(),
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def _check(self, trainer: Any, ckpt: dict[str, Any]) -> None:
        cfg, path = trainer.config, self.path
        mine = getattr(trainer.model, "config", {})
        theirs = ckpt.get("model_config", {})
        if _canonical(theirs) != _canonical(mine) or ckpt.get("objective", trainer.objective.kind) != \
                trainer.objective.kind:
            diff = sorted(k for k in set(theirs) | set(mine) if _canonical(theirs.get(k)) != _canonical(mine.get(k)))
            raise MMLibError(f"Checkpoint {path} was written for a different model (config differs in {diff}, "
                             f"objective {ckpt.get('objective')!r}); build the same model to resume, or use another "
                             "checkpoint_path / resume=False.")
        saved, now = ckpt["config"], cfg.to_dict()
        diff = sorted(k for k in now if k not in _RESUME_FREE and _canonical(saved.get(k)) != _canonical(now[k]))
        if saved.get("epochs") != cfg.epochs and cfg.scheduler != "none":
            diff.append("epochs (the learning-rate schedule depends on it)")
        if diff:
            raise MMLibError(f"Checkpoint {path} was written with different training settings ({diff}); resume with "
                             "the same settings, or use another checkpoint_path / resume=False.")

    def restore(self, trainer: Any, ckpt: dict[str, Any]) -> None:
        """Load model / optimizer / scheduler / scaler / RNGs / history / early stopping; set the next epoch."""
        self._check(trainer, ckpt)
        try:
            trainer.model.load_state_dict(ckpt["model_state"])
        except RuntimeError as exc:
            raise MMLibError(f"Checkpoint {self.path} does not fit this model ({exc}).") from exc
        trainer.optimizer.load_state_dict(ckpt["optimizer_state"])
        if trainer.scheduler is not None and ckpt["scheduler_state"] is not None:
            trainer.scheduler.load_state_dict(ckpt["scheduler_state"])
        trainer.precision.scaler.load_state_dict(ckpt["scaler_state"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        trainer.shuffle_gen.set_state(rng["shuffle"])
        trainer.history = list(ckpt["history"])
        trainer.early_stopping.load(ckpt["best"], trainer.device)
        trainer.stop = bool(ckpt["best"]["stopped_early"])
        trainer.start_epoch = int(ckpt["epoch"]) + 1
        trainer.time_before = float(ckpt.get("train_time_s", 0.0))
