"""Training: the one ``Trainer`` and what it needs (objectives, callbacks, tasks, profiles, run cache)."""
from mmlib.training.config import FitResult, TrainConfig
from mmlib.training.objectives import ContrastiveObjective, Objective, ReconstructionObjective
from mmlib.training.supervised import SupervisedObjective
from mmlib.training.tasks import Task, get_task
from mmlib.training.trainer import Trainer, fit_model

__all__ = ["Trainer", "TrainConfig", "FitResult", "fit_model", "Objective", "SupervisedObjective",
           "ContrastiveObjective", "ReconstructionObjective", "Task", "get_task"]
