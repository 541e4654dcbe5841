"""Executors for the experiment grid: where the runs of ``run_over_seeds`` / ``run_grid`` train.

The unit of work is one run of the run cache (dataset × configuration × seed), given as the
keyword arguments of ``run_fusion``. An executor takes a list of them and returns their
``RunResult`` in the same order, whoever trained them:

- ``local``: one run after the other in this process (the lab's original path, bit for bit);
- ``ray``: every run a Ray task, ``workers`` at once on a local Ray instance, or on the cluster
  at ``ray_address`` (or ``MMLIB_RAY_ADDRESS``). Each task asks for ``cpus_per_run`` CPUs and
  ``gpus_per_run`` GPUs; a fraction (``0.25``) lets several small models share one GPU.
  The dataset is put in Ray's object store once per executor and read from there by every
  task. The worker trains (writing the run cache where it trains: point ``MMLIB_CACHE`` at a
  shared path on a cluster), evaluates, and sends back the weights, the fit and the record's
  fields; here the model and its Trainer are rebuilt with those weights (so a notebook can
  keep evaluating them) and the records are added to the writer in submission order.

A run that fails names its configuration and the error: locally as a note on the original
exception; on Ray every failed run of the batch is listed in one ``MMLibError``.

>>> ex = get_executor("ray", workers=2)          # or get_executor("local")
>>> runs = ex.run(ds, [dict(fusion="early", modalities=None, seed=s, profile=P, notebook=NB,
...                         experiment="x", writer=writer) for s in P["seeds"]])
"""
from __future__ import annotations

import dataclasses
import os
import warnings
import weakref
from typing import Any, Mapping, Sequence

from mmlib.utils import MMLibError

EXECUTORS = ("local", "ray")
RAY_ADDRESS_ENV = "MMLIB_RAY_ADDRESS"
# per-run resources when the caller does not say (the runner and notebooks pass none): e.g.
# MMLIB_RAY_GPUS_PER_RUN=0.25 puts four runs on each GPU
RESOURCE_ENV = {"cpus_per_run": "MMLIB_RAY_CPUS_PER_RUN", "gpus_per_run": "MMLIB_RAY_GPUS_PER_RUN",
                "threads_per_run": "MMLIB_RAY_THREADS_PER_RUN"}


def describe_call(call: Mapping[str, Any]) -> str:
    """One line naming a run's configuration, for error messages."""
    mods = call.get("modalities")
    parts = [f"fusion={call.get('fusion')!r}", f"modalities={'all' if mods is None else list(mods)}",
             f"seed={call.get('seed')}"]
    for key in ("experiment", "model_name", "condition", "model_kwargs", "train_kwargs"):
        if call.get(key):
            parts.append(f"{key}={call[key]!r}")
    return ", ".join(parts)


class Executor:
    """Runs a list of ``run_fusion`` calls; returns their ``RunResult`` in order."""

    name = "base"

    def run(self, dataset: Any, calls: Sequence[Mapping[str, Any]]) -> list[Any]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """One run after the other, in this process: exactly ``run_fusion``."""

    name = "local"

    def run(self, dataset: Any, calls: Sequence[Mapping[str, Any]]) -> list[Any]:
        from mmlib.training.experiments import run_fusion

        out = []
        for call in calls:
            try:
                out.append(run_fusion(dataset, **call))
            except Exception as exc:
                exc.add_note(f"mmlib: the failed run was {describe_call(call)} (executor local)")
                raise
        return out


def _train_remote(dataset: Any, call: dict[str, Any], threads: int) -> dict[str, Any]:
    """The body of one Ray task: train (or load from the worker's run cache) and evaluate one run."""
    import torch

    from mmlib.training.experiments import run_fusion

    torch.set_num_threads(max(1, int(threads)))
    res = run_fusion(dataset, writer=None, **call)
    return {"state_dict": {k: v.detach().cpu() for k, v in res.model.state_dict().items()},
            "fit": dataclasses.replace(res.fit, trainer=None), "metrics": res.metrics, "fields": res.fields,
            "test_predictions": res.test_predictions}


class RayExecutor(Executor):
    """Ray tasks: ``workers`` at once on a local instance (``ray_address`` empty), or on a cluster."""

    name = "ray"

    def __init__(self, workers: int = 0, ray_address: str | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float = 0, threads_per_run: int | None = None, fallback_local: bool = False):
        # fallback_local: Ray was the profile's default, not the caller's choice; if no instance can
        # be started, the runs train locally with a warning instead of failing the notebook
        self.fallback_local = bool(fallback_local)
        try:
            import ray  # noqa: F401
        except ImportError as exc:  # pragma: no cover - ray is a dependency
            raise MMLibError("executor='ray' needs the ray package: pip install ray==2.60.0") from exc
        if cpus_per_run <= 0 or gpus_per_run < 0:
            raise MMLibError(f"RayExecutor: cpus_per_run must be > 0 and gpus_per_run >= 0 "
                             f"(got {cpus_per_run}, {gpus_per_run}).")
        self.address = ray_address or os.environ.get(RAY_ADDRESS_ENV) or None
        self.workers = int(workers) if workers else max(1, int((os.cpu_count() or 1) // cpus_per_run))
        self.cpus_per_run, self.gpus_per_run = float(cpus_per_run), float(gpus_per_run)
        self.threads = int(threads_per_run or max(1, int(cpus_per_run)))
        self._refs: dict[int, tuple[weakref.ref, Any]] = {}  # id(dataset) -> (weakref, object ref)
        self._remote: Any = None

    def _start(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                                          configure_logging=True)
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:  # a local instance: its workers see this process's mmlib settings (run cache, cache folder)
                    env = {k: v for k, v in os.environ.items() if k.startswith("MMLIB_")}
                    # address="local": a new instance even when a stale /tmp/ray/ray_current_cluster
                    # (left by `ray start`) would make a bare ray.init() try to join that one
                    ray.init(address="local", num_cpus=int(self.workers * self.cpus_per_run),
                             runtime_env={"env_vars": env} if env else None, **kwargs)
            except Exception as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise MMLibError(
                    f"executor='ray' could not start {where} ({type(exc).__name__}: {exc}). On a heavily loaded "
                    "machine Ray's raylet gives its dashboard agent only 15 s to start (ray-project/ray#65983): "
                    "retry when the load is lower, or use executor='local'.") from exc
        if self._remote is None:
            self._remote = ray.remote(_train_remote).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                                            max_retries=0)
        return ray

    def dataset_ref(self, dataset: Any) -> Any:
        """The dataset's object in Ray's store, put there once per dataset object."""
        ray = self._start()
        hit = self._refs.get(id(dataset))
        if hit is not None and hit[0]() is dataset:
            return hit[1]
        ref = ray.put(dataset)
        self._refs[id(dataset)] = (weakref.ref(dataset), ref)
        return ref

    def run(self, dataset: Any, calls: Sequence[Mapping[str, Any]]) -> list[Any]:
        from mmlib.training.experiments import restore_run

        try:
            ray = self._start()
        except MMLibError as exc:
            if not self.fallback_local:
                raise
            warnings.warn(f"{exc} Asked for by the profile, not by you: running these {len(calls)} run(s) "
                          "locally instead (pass executor='ray' to make this an error).", stacklevel=2)
            return LocalExecutor().run(dataset, calls)
        ds_ref = self.dataset_ref(dataset)
        sent = [{k: v for k, v in c.items() if k != "writer"} for c in calls]
        futures = [self._remote.remote(ds_ref, c, self.threads) for c in sent]
        trained, failed = [], []
        for call, fut in zip(calls, futures):
            try:
                trained.append(ray.get(fut))
            except Exception as exc:  # RayTaskError wraps the worker's exception as .cause
                cause = getattr(exc, "cause", None) or exc
                failed.append((call, cause))
                trained.append(None)
        if failed:
            lines = "; ".join(f"[{describe_call(c)}] {type(e).__name__}: {str(e).strip().splitlines()[-1:]}"
                              for c, e in failed)
            raise MMLibError(f"{len(failed)} of {len(calls)} run(s) failed on executor ray: {lines}") from failed[0][1]
        return [restore_run(dataset, c, t) for c, t in zip(calls, trained)]


_CACHE: dict[tuple, Executor] = {}


def get_executor(executor: str | Executor | None = "local", workers: int = 0, ray_address: str | None = None,
                 fallback_local: bool = False, **resources: Any) -> Executor:
    """An executor by name (``local`` | ``ray``), or ``executor`` itself when it is one.

    ``workers``: runs at once on a local Ray instance (0 = one per CPU); ``ray_address``: a
    Ray cluster (default ``MMLIB_RAY_ADDRESS``; empty = a local instance); ``resources``:
    ``cpus_per_run``, ``gpus_per_run`` (fractional: 0.25 = four runs per GPU), ``threads_per_run``
    (default: ``MMLIB_RAY_CPUS_PER_RUN`` / ``MMLIB_RAY_GPUS_PER_RUN`` / ``MMLIB_RAY_THREADS_PER_RUN``,
    else 1 CPU, no GPU, one thread per CPU). The same arguments return the same executor, so the
    dataset is sent once per process. ``fallback_local``: when Ray cannot start, warn and train
    locally instead of raising (for a profile's default, not for an explicit choice)."""
    if isinstance(executor, Executor):
        return executor
    name = executor or "local"
    if name not in EXECUTORS:
        raise MMLibError(f"Unknown executor {name!r}. Valid executors: {', '.join(EXECUTORS)}.")
    if workers is None or int(workers) < 0:
        raise MMLibError(f"workers must be a non-negative integer (0 = one per CPU), got {workers!r}.")
    for k, env in RESOURCE_ENV.items():
        if k not in resources and os.environ.get(env):
            try:
                resources[k] = float(os.environ[env]) if k != "threads_per_run" else int(os.environ[env])
            except ValueError as exc:
                raise MMLibError(f"{env}={os.environ[env]!r} is not a number.") from exc
    unknown = sorted(set(resources) - set(RESOURCE_ENV))
    if unknown:
        raise MMLibError(f"get_executor: unknown resource(s) {unknown}; valid: {', '.join(RESOURCE_ENV)}.")
    key = (name, int(workers), ray_address or os.environ.get(RAY_ADDRESS_ENV) or "", tuple(sorted(resources.items())),
           bool(fallback_local))
    if key not in _CACHE:
        _CACHE[key] = (LocalExecutor() if name == "local"
                       else RayExecutor(int(workers), ray_address, fallback_local=fallback_local, **resources))
    return _CACHE[key]


def shutdown() -> None:
    """Stop the local Ray instance this process started (if any) and forget the executors."""
    _CACHE.clear()
    try:
        import ray
    except ImportError:  # pragma: no cover
        return
    if ray.is_initialized():
        ray.shutdown()


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "get_executor", "describe_call", "shutdown"]
