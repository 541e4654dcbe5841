"""mmlib.training.executor: the grid on a local Ray instance gives the records of the sequential path."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_dataset
from mmlib.reporting.records import RecordWriter
from mmlib.training import executor as ex_mod
from mmlib.training.experiments import run_grid, run_over_seeds
from mmlib.utils import MMLibError

PROFILE = {"seeds": [0, 1], "epochs": 2, "patience": None, "batch_size": 64, "max_batches_per_epoch": None}
COMMON = dict(profile=PROFILE, notebook="99_test", experiment="grid", device="cpu", progress=False)
GRID = [dict(fusion="early", model_name="early_fusion"), dict(fusion="late", model_name="late_fusion"),
        dict(fusion="early", modalities=["text"], model_name="text_only")]
TIMING = ("train_time_s",)  # wall time: the one field two identical runs may not share


@pytest.fixture(scope="module")
def ds():
    return make_tiny_dataset()


@pytest.fixture(scope="module")
def ray_executor():
    ex = ex_mod.get_executor("ray", workers=2)  # a local instance with 2 CPUs, one run per CPU
    yield ex
    ex_mod.shutdown()


def _grid(ds, executor, tmp_path):
    writer = RecordWriter("99_test", "tiny", tmp_path / executor.name, profile="smoke", data=ds)
    runs = run_grid(ds, GRID, PROFILE["seeds"], executor=executor, writer=writer, **COMMON)
    return runs, writer


def test_ray_grid_gives_the_records_of_the_sequential_path(ds, ray_executor, tmp_path, one_thread):
    local_runs, local = _grid(ds, ex_mod.get_executor("local"), tmp_path)
    ray_runs, remote = _grid(ds, ray_executor, tmp_path)
    assert len(remote) == len(local) == len(GRID) * len(PROFILE["seeds"])
    for a, b in zip(local.records, remote.records):  # same order, same fields, same numbers
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
        assert b["extra"]["cached"] is False  # trained by a worker, not read from a cache
    assert [r["seed"] for r in remote.records] == [0, 1] * len(GRID)
    assert [r["model"] for r in remote.records[::2]] == [g["model_name"] for g in GRID]
    for row_l, row_r in zip(local_runs, ray_runs):
        for a, b in zip(row_l, row_r):
            np.testing.assert_array_equal(a.test_predictions, b.test_predictions)
            # the rebuilt model holds the worker's weights: evaluating it here gives the recorded numbers
            assert b.trainer.evaluate("test") == pytest.approx(b.metrics["test"], abs=1e-6)
            assert b.fit.trainer is b.trainer and len(b.fit.history) == PROFILE["epochs"]
    remote.save()
    assert remote.path.is_file() and remote.predictions_path.is_file()


def test_ray_sends_a_dataset_once_and_reports_a_failed_run(ds, ray_executor, one_thread):
    ref = ray_executor.dataset_ref(ds)
    assert ray_executor.dataset_ref(ds) is ref  # the object store holds one copy per dataset
    bad = dict(fusion="early", model_name="broken", model_kwargs={"no_such_option": 1})
    with pytest.raises(MMLibError) as err:
        run_grid(ds, [dict(fusion="late"), bad], [0], executor=ray_executor, **COMMON)
    msg = str(err.value)
    assert "1 of 2 run(s) failed on executor ray" in msg
    assert "model_name='broken'" in msg and "no_such_option" in msg and "seed=0" in msg
    assert ray_executor.dataset_ref(ds) is ref


def test_local_failure_names_its_configuration(ds, one_thread):
    with pytest.raises(Exception) as err:
        run_over_seeds(ds, "early", None, [3], model_kwargs={"no_such_option": 1}, executor="local", **COMMON)
    notes = " ".join(getattr(err.value, "__notes__", []))
    assert "fusion='early'" in notes and "seed=3" in notes and "executor local" in notes


def test_executor_choice(ds, one_thread):
    assert isinstance(ex_mod.get_executor(None), ex_mod.LocalExecutor)
    assert ex_mod.get_executor("local") is ex_mod.get_executor("local")
    with pytest.raises(MMLibError, match="Unknown executor 'dask'"):
        ex_mod.get_executor("dask")
    with pytest.raises(MMLibError, match="workers"):
        ex_mod.get_executor("ray", workers=-1)
    # the profile's executor is the default; an unknown one in a profile is refused before any training
    with pytest.raises(MMLibError, match="Unknown executor 'nope'"):
        run_over_seeds(ds, "early", None, [0], **{**COMMON, "profile": {**PROFILE, "executor": "nope"}})
    with pytest.raises(MMLibError, match="seeds are its own argument"):
        run_grid(ds, [dict(fusion="early", seed=1)], [0], **COMMON)


def test_a_profile_default_ray_that_cannot_start_falls_back_to_local(ds, monkeypatch, tmp_path, one_thread):
    """Ray as the profile's default must not break a notebook on a machine where no instance can
    start: the runs train locally, with a warning, and give the sequential path's records; asked
    for explicitly, the same failure is an error."""
    def no_ray(self):
        raise MMLibError("executor='ray' could not start a local Ray instance (test).")

    monkeypatch.setattr(ex_mod.RayExecutor, "_start", no_ray)
    ex_mod._CACHE.clear()
    profile = {**PROFILE, "executor": "ray"}
    with pytest.warns(UserWarning, match="running these 2 run\\(s\\) locally"):
        runs = run_over_seeds(ds, "early", None, PROFILE["seeds"], **{**COMMON, "profile": profile})
    local = run_over_seeds(ds, "early", None, PROFILE["seeds"], executor="local", **COMMON)
    assert [r.metrics["test"] for r in runs] == [r.metrics["test"] for r in local]
    with pytest.raises(MMLibError, match="could not start"):
        run_over_seeds(ds, "early", None, [0], executor="ray", **{**COMMON, "profile": profile})
    ex_mod._CACHE.clear()
