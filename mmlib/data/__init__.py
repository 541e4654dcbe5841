"""Dataset registry: ``load_dataset(name, **params)`` returns a ``MultimodalDataset``.

Wherever a dataset name is taken, the path of a spec file (``.toml``, see
``mmlib.data.spec``; or an embeddings ``.npz``) works too: ``resolve_dataset(path)``
registers it under its ``name`` for this process and returns that name, which then
names the reports folder."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.data.spec import DatasetSpec, is_spec_path, read_spec
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


# spec files registered in this process: name -> spec
_SPECS: dict[str, DatasetSpec] = {}


def resolve_dataset(dataset: str) -> str:
    """The registered name of ``dataset``: a registered name is returned as it is; the path of
    a spec file (``.toml``) or embeddings file (``.npz``) is read, checked and registered under
    its ``name`` (the name of its reports folder), which is returned."""
    dataset = str(dataset)
    if dataset in _REGISTRY or dataset in _SPECS:
        return dataset
    if is_spec_path(dataset):
        spec = read_spec(dataset)
        _SPECS[spec.name] = spec
        return spec.name
    raise MMLibError(f"Unknown dataset {dataset!r}. Available: {', '.join(available_datasets())}, or the path of "
                     "a dataset spec file (.toml) or an embeddings file (.npz).")


def dataset_name(dataset: str) -> str:
    """The name the reports use for ``dataset`` (a registered name, or a spec file's ``name``)."""
    return resolve_dataset(dataset)


def dataset_spec(dataset: str) -> DatasetSpec | None:
    """The spec behind ``dataset`` (a spec path or a registered spec name); None for a built-in dataset."""
    return _SPECS.get(resolve_dataset(dataset))


def other_targets(name: str) -> list[str]:
    """Targets of dataset ``name`` that the reports study besides its primary one (``[]`` for most)."""
    spec = dataset_spec(name)
    if spec is not None:
        return list(spec.other_targets)
    return list(_OTHER_TARGETS.get(name, ()))


def default_target(name: str) -> str | None:
    """The target dataset ``name`` loads when none is asked for (None when its loader takes no ``target``)."""
    spec = dataset_spec(name)
    if spec is not None and spec.params.get("target") is not None:
        return spec.params["target"]
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
    """The loader function of a registered dataset (for a spec: of the loader it names)."""
    if name not in _REGISTRY:
        name = resolve_dataset(name)
        name = _SPECS[name].loader if name in _SPECS else name
    module, func = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), func)


def required_parameters(name: str) -> list[str]:
    """Parameters the loader of dataset ``name`` cannot do without (e.g. ``csv_path`` for ``folder``;
    ``[]`` for a spec, which gives them)."""
    if dataset_spec(name) is not None:
        return []
    params = inspect.signature(get_loader(name)).parameters.values()
    return [p.name for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def load_dataset(name: str, **params: Any) -> MultimodalDataset:
    """Load a registered dataset. Unknown keyword parameters are an error (listing the valid ones),
    and so are missing required ones (naming them). ``name`` may be a spec file's path (or
    the name it registered): the spec's parameters, then ``params``, go to its loader."""
    spec = dataset_spec(name)
    if spec is not None:
        ds = load_dataset(spec.loader, **{**spec.params, **params})
        ds.name = spec.name
        ds.meta["spec"] = str(spec.path)
        return ds
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
    ``text_encoder``), plus explicit overrides. Keys a loader does not take are skipped. A
    profile's mpnet text encoder falls back to MiniLM, with a warning, when mpnet is not in the
    cache (``mmlib.data.sentence.profile_text_encoder``); an explicit override never does.
    For a spec the spec's own values win, except ``n_rows``: the smaller of the two."""
    loader = get_loader(name)
    accepted = inspect.signature(loader).parameters
    spec = dataset_spec(name)
    fixed = spec.params if spec is not None else {}
    params: dict[str, Any] = {}
    for key in ("n_rows", "image_size", "text_encoder"):
        if key in accepted and profile.get(key) is not None:
            if key == "n_rows" and fixed.get(key) is not None:
                params[key] = min(int(profile[key]), int(fixed[key]))
            elif key not in fixed:
                params[key] = profile[key]
    if "text_encoder" in params and "text_encoder" not in overrides:  # mpnet only when it is in the cache; else MiniLM, with a warning
        from mmlib.data.sentence import profile_text_encoder

        params["text_encoder"] = profile_text_encoder(params["text_encoder"], overrides.get("cache_dir"))
    params.update(overrides)
    return load_dataset(name, **params)


__all__ = ["load_for_profile", "resolve_dataset", "dataset_name", "dataset_spec", "read_spec", "DatasetSpec", "load_dataset", "available_datasets", "required_parameters", "other_targets",
           "default_target",
           "published_results", "Modality",
           "MultimodalDataset", "make_splits"]
