"""mmlib: a multimodal fusion lab.

A thin, tested package behind the numbered notebooks, laid out by role:

============ =========================================================================
package      what is in it
============ =========================================================================
data/        ``load_dataset`` and the loaders (spacecraft, clothing, folder, embeddings),
             the ``MultimodalDataset`` contract, tokenizer, pairs, MiniLM embeddings
models/      encoders, fusion modules, the multimodal model, alignment models
             (translators, two towers, autoencoder), losses, practitioner baselines
training/    the one ``Trainer`` (objectives, callbacks, precision, checkpoints), tasks
             and metrics, profiles, the run cache, ``run_fusion`` / ``run_over_seeds``
analysis/    ablations, robustness, attribution, imbalance, planted recovery, stacking,
             alignment and retrieval, embedding fusion, postmortem, per-notebook studies
reporting/   the papermill + nbconvert runner, result records, index, markdown, plots
============ =========================================================================

``config`` holds the paths, ``utils`` seeding, device choice, atomic writes and
``MMLibError``; ``reports`` and ``bench`` are the command-line entry points
(``python -m mmlib.reports``, ``python -m mmlib.bench``).
"""
from mmlib.config import PROJECT_ROOT, DATA_CACHE, REPORTS_DIR
from mmlib.utils import set_seeds, resolve_device, MMLibError

__version__ = "0.1.0"

__all__ = ["PROJECT_ROOT", "DATA_CACHE", "REPORTS_DIR", "set_seeds", "resolve_device", "MMLibError"]
