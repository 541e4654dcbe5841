"""Callbacks: the Trainer's cross-cutting behaviour, each a small named part.

A callback overrides any of the hooks below; the Trainer calls them in order.

=================== ===================================================================
hook                when
=================== ===================================================================
on_fit_start        before the first epoch (``Checkpointing`` restores a run here)
on_loss             after a batch's loss, inside autocast; returns the loss to optimise
on_after_backward   gradients are unscaled, not yet clipped (OGM-GE modulates them here)
on_batch_end        after the optimizer step
on_train_epoch_end  the epoch's training columns are in ``row``
on_validation_end   the validation columns are in ``row`` (tracking adds its own)
on_epoch_end        the row is in the history (early stopping decides, checkpoints save)
on_fit_end          after the last epoch (early stopping restores the best weights)
=================== ===================================================================

``EarlyStopping`` and ``ProgressBar`` are always present; ``ModalityBalancing``,
``ModalityTracking`` and ``Checkpointing`` (``mmlib.training.checkpoint``) are added by
their ``TrainConfig`` fields.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from mmlib.utils import MMLibError


class Callback:
    def on_fit_start(self, trainer: Any) -> None: ...
    def on_loss(self, trainer: Any, out: Any, batch: Any, loss: torch.Tensor) -> torch.Tensor:
        return loss
    def on_after_backward(self, trainer: Any, out: Any, batch: Any) -> None: ...
    def on_batch_end(self, trainer: Any, loss_value: float) -> None: ...
    def on_train_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None: ...
    def on_validation_end(self, trainer: Any, row: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Any) -> None: ...


def _better(new: float, old: float | None, higher: bool, min_delta: float) -> bool:
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return True
    return new > old + min_delta if higher else new < old - min_delta


class EarlyStopping(Callback):
    """Keep the weights of the best epoch by the objective's monitored column; stop after
    ``patience`` epochs without an improvement of more than ``min_delta`` (``None``: never
    stop early). Epochs of OneCycle's warm-up are not counted: its rising learning rate
    often makes validation worse on purpose. The best weights are restored at the end."""

    def __init__(self, patience: int | None, min_delta: float = 0.0, warmup_epochs: int = 0):
        self.patience, self.min_delta, self.warmup_epochs = patience, float(min_delta), int(warmup_epochs)
        self.reset()

    def reset(self) -> None:
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.monitor: str | None = None
        self.higher = True
        self.stopped_early = False

    def on_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        if self.monitor is None:
            self.monitor, self.higher = trainer.objective.monitor(row)
        epoch = int(row["epoch"])
        score = float(row[self.monitor])
        if _better(score, self.best_score, self.higher, self.min_delta) or self.best_state is None:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        elif epoch > self.warmup_epochs:
            self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience and epoch < trainer.config.epochs:
            self.stopped_early = True
            trainer.stop = True

    def on_fit_end(self, trainer: Any) -> None:
        if self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def state(self) -> dict[str, Any]:
        return {"state": self.best_state, "epoch": self.best_epoch, "score": self.best_score, "monitor": self.monitor,
                "higher": self.higher, "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early}

    def load(self, saved: dict[str, Any], device: torch.device) -> None:
        state = saved["state"]
        self.best_state = {k: v.to(device) for k, v in state.items()} if state else None
        self.best_epoch, self.best_score, self.monitor = saved["epoch"], saved["score"], saved["monitor"]
        self.higher = saved.get("higher", self.monitor != "val_loss")
        self.bad_epochs, self.stopped_early = saved["bad_epochs"], saved["stopped_early"]


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running loss; silent with ``progress=False`` (and when
    ``TQDM_DISABLE=1``, as the report runner sets it, so reports and logs stay clean)."""

    def __init__(self, enabled: bool):
        self.enabled = bool(enabled)
        self.bar: Any = None

    def start_epoch(self, trainer: Any, epoch: int) -> None:
        self.bar = tqdm(total=trainer.steps_per_epoch, desc=f"epoch {epoch}/{trainer.config.epochs}", leave=False,
                        disable=not self.enabled, dynamic_ncols=True)

    def on_batch_end(self, trainer: Any, loss_value: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if self.enabled:
                self.bar.set_postfix(loss=f"{loss_value:.4g}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _unimodal(out: dict[str, Any], why: str) -> dict[str, torch.Tensor]:
    uni = out.get("unimodal")
    if not uni:
        raise MMLibError(f"{why} needs per-modality outputs (out['unimodal']); build the model with "
                         "aux_heads=True (or use fusion='late').")
    return uni


def _presence_used(out: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    # the model reports the mask it actually used (after modality dropout); else the batch's
    return out.get("present") or batch["present"]


def ogm_coefficients(scores: dict[str, torch.Tensor], alpha: float, variant: str = "published"
                     ) -> dict[str, torch.Tensor]:
    """OGM's per-modality gradient coefficients from per-modality scores.

    ρ_m = score_m / mean of the other modalities' scores (with two modalities, the paper's
    ratio). ``published`` (Peng et al. 2022, Eq. 10 and the official code): k_m = 1 − tanh(α·ρ_m)
    when ρ_m > 1, else 1. ``smooth`` (ours): k_m = 1 − tanh(α·relu(ρ_m − 1)), which is 1 at
    ρ = 1 and damps far less (at ρ = 1.2, α = 0.5: 0.90 against the published 0.46)."""
    names = list(scores)
    if len(names) < 2:
        return {m: torch.ones_like(scores[m]) for m in names}
    s = torch.stack([scores[m] for m in names])
    out = {}
    for i, m in enumerate(names):
        others = torch.cat([s[:i], s[i + 1:]])
        ratio = s[i] / others.mean().clamp(min=1e-12)
        if variant == "published":
            coef = torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))
        else:
            coef = 1 - torch.tanh(alpha * torch.relu(ratio - 1))
        out[m] = coef
    return out


def modality_scores(task: str, outputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                    y: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """How well each modality's output alone fits the batch, over the rows where it is present:
    classification, the mean probability of the true class (the paper's score); regression
    (not in the paper), 1 / (1 + MSE) of ``scale`` × the output against the target."""
    scores = {}
    for m, u in outputs.items():
        if m not in present or not bool(present[m].any()):
            continue
        mask = present[m].float()
        u = u.float()
        if task == "regression":
            mse = (((scale * u.squeeze(-1) - y.float()) ** 2) * mask).sum() / mask.sum()
            scores[m] = 1.0 / (1.0 + mse)
            continue
        if task == "binary":
            p = torch.sigmoid(u.squeeze(-1))
            per_row = torch.where(y == 1, p, 1 - p)
        else:
            per_row = torch.softmax(u, dim=-1).gather(1, y.long().unsqueeze(1)).squeeze(1)
        scores[m] = (per_row * mask).sum() / mask.sum()
    return scores


class ModalityBalancing(Callback):
    """Remedies for a fused model that leans on one modality (supervised objective only):

    * ``aux_weight`` > 0: add the mean over modalities of each unimodal head's loss on the
      rows where that modality is present (needs ``aux_heads=True``);
    * ``ogm_alpha``: OGM-GE gradient modulation. ``variant="published"`` follows Peng et
      al. (2022): each modality is scored by the fused model's own per-modality
      contribution (``out["contributions"]``: early fusion with ``head_layers=0``, the
      paper's concatenation fusion, or late fusion), the dominant modality's encoder
      gradients are scaled by 1 − tanh(α·ρ), and the GE step adds Gaussian noise with each
      gradient tensor's own std to every modality branch (as the official code does; it
      touches only 4-d conv weights of its ResNets, we touch every encoder tensor).
      ``variant="smooth"`` is our earlier variant: scores from auxiliary heads, coefficient
      1 − tanh(α·relu(ρ − 1)), noise only on the modulated branches. The epoch's mean
      coefficient goes to ``ogm_coef_<m>``."""

    def __init__(self, aux_weight: float = 0.0, ogm_alpha: float | None = None, ogm_noise: bool = True,
                 variant: str = "published"):
        self.aux_weight, self.ogm_alpha, self.ogm_noise = float(aux_weight), ogm_alpha, bool(ogm_noise)
        self.variant = variant
        self.coef_sum: dict[str, torch.Tensor] = {}
        self.steps = 0

    def on_fit_start(self, trainer: Any) -> None:
        if self.ogm_alpha is not None and not hasattr(trainer.model, "branch_parameters"):
            raise MMLibError("ogm_alpha needs a model with branch_parameters() (e.g. mmlib.models.build_model).")

    def on_loss(self, trainer: Any, out: Any, batch: Any, loss: torch.Tensor) -> torch.Tensor:
        if self.aux_weight <= 0:
            return loss
        uni = _unimodal(out, "aux_weight > 0")
        present = _presence_used(out, batch)
        loss_fn = trainer.objective.loss_fn
        y = trainer.objective.target(batch["y"])
        aux = torch.stack([loss_fn(u, y, weight=present[m].float()) for m, u in uni.items()]).mean()
        return loss + self.aux_weight * aux

    def on_after_backward(self, trainer: Any, out: Any, batch: Any) -> None:
        if self.ogm_alpha is None:
            return
        for m, c in self.modulate(trainer, out, batch).items():
            self.coef_sum[m] = self.coef_sum.get(m, 0.0) + c
        self.steps += 1

    def on_train_epoch_end(self, trainer: Any, row: dict[str, Any]) -> None:
        for m, s in self.coef_sum.items():
            row[f"ogm_coef_{m}"] = float(s) / max(self.steps, 1)
        self.coef_sum, self.steps = {}, 0

    def _outputs(self, out: dict[str, Any]) -> tuple[dict[str, torch.Tensor], float]:
        if self.variant == "smooth":
            return _unimodal(out, "ogm_alpha (variant 'smooth')"), 1.0
        contrib = out.get("contributions")
        if not contrib:
            raise MMLibError("OGM-GE as published scores each modality by the fused model's own contribution "
                             "(out['contributions']); build the model with fusion='early', head_layers=0 (the "
                             "paper's concatenation fusion) or fusion='late', or use ogm_variant='smooth'.")
        return contrib, float(len(contrib))  # regression: a contribution times M is on the prediction's scale

    def modulate(self, trainer: Any, out: Any, batch: Any) -> dict[str, torch.Tensor]:
        """Scale the branches' gradients by their coefficients (and add GE noise); return the coefficients."""
        outputs, scale = self._outputs(out)
        obj = trainer.objective
        with torch.no_grad():
            kind = getattr(obj, "score_task", obj.task.name)  # ce_ev: logits over the target's values
            scores = modality_scores(kind, outputs, _presence_used(out, batch), obj.target(batch["y"]), scale)
            coefs = ogm_coefficients(scores, float(self.ogm_alpha), self.variant)
        branches = trainer.model.branch_parameters()
        for m, coef in coefs.items():
            noisy = self.ogm_noise and (self.variant == "published" or bool(coef < 1))
            for p in branches.get(m, []):
                if p.grad is None:
                    continue
                g = p.grad
                std = g.float().std() if g.numel() > 1 else torch.zeros((), device=g.device)
                g.mul_(coef.to(g.dtype))
                if noisy:  # GE: generalisation-enhancing noise
                    g.add_(torch.randn_like(g) * (std + 1e-8).to(g.dtype))
        return coefs


class ModalityTracking(Callback):
    """Each epoch, the validation metric of the fused model with each modality dropped
    (``val_<metric>_without_<m>``) and of each unimodal head alone (``val_<metric>_head_<m>``,
    on the rows where m is present), to watch which modality the model relies on."""

    def on_validation_end(self, trainer: Any, row: dict[str, Any]) -> None:
        obj = trainer.objective
        metric = obj.task.metric
        mods = trainer.modalities
        if len(mods) > 1:
            for m in mods:
                pred, _, y = obj.forward("val", present_override={m: False})
                row[f"val_{metric}_without_{m}"] = obj.scores(pred, y)[metric]
        _, uni, y = obj.last_val
        if not uni:
            return
        val_rows = torch.as_tensor(obj.data.splits["val"], device=trainer.device)
        for m, u in uni.items():
            mask = obj.data.modalities[m].present[val_rows] if m in obj.data.modalities else None
            if mask is None or not bool(mask.any()):
                row[f"val_{metric}_head_{m}"] = float("nan")
                continue
            row[f"val_{metric}_head_{m}"] = obj.scores(u[mask], y[mask])[metric]
