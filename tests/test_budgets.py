"""Training budgets in optimizer steps (issue 15): the size rule of mmlib.training.profiles."""
from __future__ import annotations

import pytest

from mmlib.training.config import size_budget
from mmlib.training.experiments import run_fusion, train_config_from_profile
from mmlib.training.profiles import PROFILES, get_profile
from tests.conftest import make_tiny_dataset

SPACECRAFT_TRAIN, CLOTHING_TRAIN = 8400, 16440  # train rows of the full datasets (70 %)


def test_batch_cap_and_step_floor():
    b = size_budget(1050, epochs=12, batch_size=256, patience=4, min_steps=400, min_batches_per_epoch=16)
    assert b["batch_size"] == 64 and b["steps_per_epoch"] == 17       # 1050 / 16 = 65 → 64
    assert b["min_steps"] == 800                                       # 400 × √(256 / 64)
    assert b["epochs"] == 48 and b["steps"] >= 800                     # ceil(800 / 17)
    assert b["patience"] == 16                                         # 4 × 48 / 12
    uncapped = size_budget(20000, epochs=1, batch_size=256, patience=4, min_steps=400, min_batches_per_epoch=16)
    assert uncapped["batch_size"] == 256 and uncapped["min_steps"] == 400 and uncapped["epochs"] == 6  # 79 steps/epoch
    tiny = size_budget(100, epochs=12, batch_size=256, patience=4, min_steps=800, min_batches_per_epoch=16)
    assert tiny["batch_size"] == 32                                    # never below 32
    off = size_budget(1050, epochs=12, batch_size=256, patience=4)
    assert (off["epochs"], off["batch_size"], off["patience"]) == (12, 256, 4)
    capped = size_budget(1050, epochs=2, batch_size=128, min_steps=100, max_batches_per_epoch=3)
    assert capped["steps_per_epoch"] == 3 and capped["epochs"] == 34


@pytest.mark.parametrize("n_train", [SPACECRAFT_TRAIN, CLOTHING_TRAIN])
def test_standard_profile_leaves_the_large_datasets_alone_or_says_so(n_train):
    P = get_profile("standard")
    cfg = train_config_from_profile(P, n_train=n_train)
    old = train_config_from_profile(P)  # no size: the profile's own numbers
    assert (old.epochs, old.batch_size, old.patience) == (P["epochs"], P["batch_size"], P["patience"])
    assert cfg.batch_size == P["batch_size"]
    steps = -(-n_train // P["batch_size"])
    if steps * P["epochs"] >= P["min_steps"]:
        assert (cfg.epochs, cfg.patience) == (P["epochs"], P["patience"])
    else:
        assert cfg.epochs * steps >= P["min_steps"] > (cfg.epochs - 1) * steps


def test_small_data_gets_the_step_floor_and_overrides_win():
    P = get_profile("standard")
    cfg = train_config_from_profile(P, n_train=1050)
    assert cfg.batch_size == 64 and cfg.epochs * 17 >= 2 * P["min_steps"] and cfg.patience > P["patience"]
    assert (cfg.epochs, cfg.patience) == (46, 16)                      # 390 × √4 = 780 steps, 17 per epoch
    assert train_config_from_profile(P, n_train=1050, epochs=3, batch_size=100).epochs == 3
    assert train_config_from_profile(P, n_train=1050, epochs=3, batch_size=100).batch_size == 100


def test_smoke_and_full_budgets():
    smoke = get_profile("smoke")
    cfg = train_config_from_profile(smoke, n_train=168)
    assert (cfg.epochs, cfg.batch_size) == (smoke["epochs"], smoke["batch_size"])  # smoke: rule off
    full = get_profile("full")
    assert train_config_from_profile(full, n_train=SPACECRAFT_TRAIN).epochs == full["epochs"]
    assert set(PROFILES["standard"]) >= {"min_steps", "min_batches_per_epoch"}


def test_run_fusion_applies_the_rule(one_thread):
    ds = make_tiny_dataset(n=300)                       # 210 train rows
    P = {**get_profile("smoke"), "epochs": 1, "batch_size": 256, "max_batches_per_epoch": None,
         "min_steps": 5, "min_batches_per_epoch": 4}   # batch 32 (210 / 4 = 52), floor 5 × √8 → 15 steps: 3 epochs of 7
    r = run_fusion(ds, "early", None, 0, profile=P, notebook="t", experiment="budget", progress=False)
    assert (r.trainer.config.batch_size, r.trainer.config.epochs) == (32, 3)
    assert r.trainer.steps_per_epoch == 7 and r.fit.epochs_run == 3


def test_convergence_summary_counts_runs_that_stopped_and_runs_still_improving(one_thread):
    from mmlib.analysis.summaries import convergence_summary
    ds = make_tiny_dataset(n=300)
    P = {**get_profile("smoke"), "epochs": 3, "patience": 1, "max_batches_per_epoch": None}
    recs = [run_fusion(ds, "early", None, s, profile=P, notebook="t", experiment="budget", progress=False).record
            for s in (0, 1)]
    conv = convergence_summary(recs)
    assert conv.values["runs"] == 2 and list(conv.table.index) == ["early_fusion"]
    assert conv.table.loc["early_fusion", "budget (epochs, patience)"] == "3, 1"
    # hand-made records flip the sentence both ways
    rec = lambda seed, best, ran, stopped: {"model": "m", "seed": seed, "epochs": ran,  # noqa: E731
                                            "extra": {"best_epoch": best, "stopped_early": stopped, "max_epochs": 10,
                                                      "patience": 2}}
    done = convergence_summary([rec(0, 4, 6, True), rec(1, 7, 9, True)])
    assert done.values == {"runs": 2, "stopped_early": 2, "still_improving": 0} and "no run had" in done.text
    left = convergence_summary([rec(0, 4, 6, True), rec(1, 10, 10, False)])
    assert left.values["still_improving"] == 1 and "still improving" in left.text
    assert convergence_summary([{"model": "m", "seed": 0, "extra": {}}]) is None
