"""Dataset registry: ``load_dataset(name, **params)`` returns a ``MultimodalDataset``."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.utils import MMLibError

# name -> "module:function"; imported lazily so a missing optional piece never
# breaks the others.
_REGISTRY: dict[str, str] = {
    "spacecraft": "mmlib.data.spacecraft:load_spacecraft",
    "folder": "mmlib.data.folder:load_folder",
    "clothing": "mmlib.data.clothing:load_clothing",
    "embeddings": "mmlib.data.embeddings:load_embeddings",
}


# dataset -> targets studied besides the loader's default one (the primary target)
_OTHER_TARGETS: dict[str, tuple[str, ...]] = {
    "clothing": ("Recommended IND", "Rating_class"),
}


def other_targets(name: str) -> list[str]:
    """Targets of dataset ``name`` that the reports study besides its primary one (``[]`` for most)."""
    return list(_OTHER_TARGETS.get(name, ()))


def default_target(name: str) -> str | None:
    """The target dataset ``name`` loads when none is asked for (None when its loader takes no ``target``)."""
    p = inspect.signature(get_loader(name)).parameters.get("target")
    return None if p is None or p.default is p.empty else p.default


def published_results(name: str) -> list[dict[str, Any]]:
    """Published figures on dataset ``name`` to compare with (each: reference, target, task,
    metric, value or [low, high], caveat); ``[]`` when there are none (synthetic data)."""
    if name == "clothing":
        from mmlib.data.clothing import PUBLISHED
        return [dict(p) for p in PUBLISHED]
    return []


def available_datasets() -> list[str]:
    return sorted(_REGISTRY)


def get_loader(name: str) -> Callable[..., MultimodalDataset]:
    if name not in _REGISTRY:
        raise MMLibError(f"Unknown dataset {name!r}. Available: {', '.join(available_datasets())}.")
    module, func = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), func)


def required_parameters(name: str) -> list[str]:
    """Parameters the loader of dataset ``name`` cannot do without (e.g. ``csv_path`` for ``folder``)."""
    params = inspect.signature(get_loader(name)).parameters.values()
    return [p.name for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def load_dataset(name: str, **params: Any) -> MultimodalDataset:
    """Load a registered dataset. Unknown keyword parameters are an error (listing the valid ones),
    and so are missing required ones (naming them)."""
    loader = get_loader(name)
    sig = inspect.signature(loader)
    if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in params if k not in sig.parameters]
        if unknown:
            valid = ", ".join(sig.parameters)
            raise MMLibError(f"load_dataset({name!r}): unknown parameter(s) {unknown}. Valid parameters: {valid}.")
    missing = [k for k in required_parameters(name) if k not in params]
    if missing:
        example = ", ".join(f"{k}=..." for k in missing)
        raise MMLibError(f"load_dataset({name!r}) needs the parameter(s) {missing}: call "
                         f"load_dataset({name!r}, {example}).")
    return loader(**params)


def load_for_profile(name: str, profile: dict[str, Any], **overrides: Any) -> MultimodalDataset:
    """Load a dataset with the sizes a run profile asks for (``n_rows``, ``image_size``,
    ``text_encoder``), plus explicit overrides. Keys a loader does not take are skipped."""
    loader = get_loader(name)
    accepted = inspect.signature(loader).parameters
    params: dict[str, Any] = {}
    for key in ("n_rows", "image_size", "text_encoder"):
        if key in accepted and profile.get(key) is not None:
            params[key] = profile[key]
    params.update(overrides)
    return load_dataset(name, **params)


__all__ = ["load_for_profile", "load_dataset", "available_datasets", "required_parameters", "other_targets",
           "default_target",
           "published_results", "Modality",
           "MultimodalDataset", "make_splits"]
