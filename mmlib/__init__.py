"""mmlib: a multimodal fusion lab.

A thin, tested package behind the numbered notebooks: datasets with planted or
real multimodal structure, encoders, fusion modules, a trainer, evaluation of
ablations and robustness, and the papermill report runner.
"""
from mmlib.config import PROJECT_ROOT, DATA_CACHE, REPORTS_DIR
from mmlib.utils import set_seeds, resolve_device, MMLibError

__version__ = "0.1.0"

__all__ = ["PROJECT_ROOT", "DATA_CACHE", "REPORTS_DIR", "set_seeds", "resolve_device", "MMLibError"]
