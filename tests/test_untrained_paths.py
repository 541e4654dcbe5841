"""Missing-modality paths the model never trained: the flag (``missing_path_trained``),
where it lands (drop-at-inference and Shapley records, the drop table and text), and the
interventional Shapley values used instead of masking when a path is untrained."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_dataset
from mmlib.analysis.ablations import (agreement_text, drop_ablation, drop_text, shapley_ablation,
                                      shapley_agreement)
from mmlib.analysis.attribution import all_subsets, shapley_values, subset_values_interventional
from mmlib.analysis.robustness import missing_path_trained, untrained_paths
from mmlib.data.base import Modality
from mmlib.models import build_model
from mmlib.reporting.records import RecordWriter
from mmlib.training.experiments import run_over_seeds
from mmlib.training.tasks import get_task
from mmlib.training.trainer import TrainConfig, Trainer
from mmlib.utils import MMLibError

PROFILE = {"seeds": [0], "epochs": 2, "patience": None, "batch_size": 64, "max_batches_per_epoch": None}
RUN = dict(profile=PROFILE, notebook="99_test", device="cpu", progress=False,
           model_kwargs={"modality_dropout": 0.0})


def _with_noise(n: int = 600):
    """Tabular plus ``noise``, an embedding of pure N(0, 1) noise; nothing missing (no path trained)."""
    ds = make_tiny_dataset(n=n, missing=0.0).subset_modalities(["tabular"])
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(n, 4)).astype(np.float32))
    return ds.with_modality(Modality("noise", "embedding", {"x": x}, torch.ones(n, dtype=torch.bool), {"dim": 4}))


def _stub(ds, dropout: float, mods):
    return SimpleNamespace(model=SimpleNamespace(modality_dropout=dropout, modalities=list(mods)), data=ds)


# ------------------------------------------------------------------- the flag
def test_missing_path_trained_both_ways():
    full = make_tiny_dataset(n=400, missing=0.0)  # every modality in every row
    assert not missing_path_trained(_stub(full, 0.0, ["tabular", "text"]), "tabular")
    assert missing_path_trained(_stub(full, 0.1, ["tabular", "text"]), "tabular")  # modality dropout trains it
    assert missing_path_trained(_stub(full, 0.0, ["tabular", "text"]), "image")  # not read: masking changes nothing
    assert untrained_paths(_stub(full, 0.0, ["tabular", "text"]), ["image", "text", "tabular"]) == ["text", "tabular"]
    some = make_tiny_dataset(n=400, missing=0.1)  # ~10 % of training rows lack each modality
    assert missing_path_trained(_stub(some, 0.0, ["tabular", "text"]), "text")
    # the 1 % threshold on the training split
    rare = make_tiny_dataset(n=2000, missing=0.0)
    train = torch.as_tensor(rare.splits["train"])
    for frac, want in ((0.005, False), (0.02, True)):
        present = torch.ones(rare.n, dtype=torch.bool)
        present[train[: int(frac * len(train))]] = False
        text = rare.modalities["text"]
        ds = rare.with_modality(Modality("text", "text", text.tensors, present, text.info))
        assert missing_path_trained(_stub(ds, 0.0, ["text"]), "text") is want
    with pytest.raises(MMLibError, match="Unknown modality"):
        missing_path_trained(_stub(full, 0.0, ["text"]), "audio")


def test_missing_path_trained_reads_the_real_model():
    ds = make_tiny_dataset(n=200, missing=0.0)
    cfg = TrainConfig(epochs=1, batch_size=32, progress=False, device="cpu", seed=0, patience=None)
    off = Trainer(build_model(ds, "early", modalities=["tabular", "text"], modality_dropout=0.0), ds, cfg)
    on = Trainer(build_model(ds, "early", modalities=["tabular", "text"], modality_dropout=0.3), ds, cfg)
    assert not missing_path_trained(off, "text") and missing_path_trained(on, "text")


# ------------------------------------------------------- interventional Shapley
@pytest.fixture(scope="module")
def noise_trainer():
    ds = _with_noise(1500)  # enough rows that the model does not fit the noise
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=4, batch_size=32, progress=False, device="cpu", seed=0, patience=None)
    trainer = Trainer(build_model(ds, "early", modalities=["tabular", "noise"], modality_dropout=0.0), ds, cfg)
    trainer.fit()
    return trainer


def test_interventional_shapley_gives_a_noise_modality_no_value(noise_trainer):
    mods = ["tabular", "noise"]
    value = subset_values_interventional(noise_trainer, draws=8, seed=0)
    assert set(value) == set(all_subsets(mods))
    assert value[frozenset(mods)] == pytest.approx(noise_trainer.evaluate("test")["r2"], abs=1e-5)
    assert abs(value[frozenset()]) < 0.2  # K-draw average of background predictions: about a constant
    phi = shapley_values(value, mods)
    assert sum(phi.values()) == pytest.approx(value[frozenset(mods)] - value[frozenset()])  # efficiency
    assert phi["tabular"] > 0.3
    assert abs(phi["noise"]) < 0.05
    assert subset_values_interventional(noise_trainer, draws=8, seed=0) == value  # seeded
    with pytest.raises(MMLibError, match="draws"):
        subset_values_interventional(noise_trainer, draws=0)


def test_interventional_swaps_tensors_and_presence(noise_trainer):
    """One draw, noise replaced: the prediction equals the model's on the donor rows' noise."""
    ds = noise_trainer.data
    one = subset_values_interventional(noise_trainer, ["tabular", "noise"], draws=1, seed=3)
    rows = torch.as_tensor(ds.splits["test"])
    bg = torch.as_tensor(ds.splits["train"])
    donors = bg[torch.randint(len(bg), (1, len(rows)), generator=torch.Generator().manual_seed(3))][0]
    absent = torch.zeros(ds.n, dtype=torch.bool)  # a donor's presence travels with its tensors

    def by_hand(batch):
        pos = {int(r): i for i, r in enumerate(rows)}
        d = donors[[pos[int(i)] for i in batch["idx"]]]
        out = dict(batch)
        out["inputs"] = {**batch["inputs"], "noise": {"x": ds.modalities["noise"].tensors["x"][d]}}
        out["present"] = {**batch["present"], "noise": ~absent[d]}
        return out

    pred = noise_trainer.predict("test", transform=by_hand)
    want = get_task("regression").metrics(ds.target[rows].numpy(), pred)["r2"]
    assert one[frozenset({"tabular"})] == pytest.approx(want, abs=1e-6)


# ------------------------------------------------- records, auto method, text
@pytest.fixture(scope="module")
def untrained_runs():
    ds = _with_noise(n=300)
    mods = ds.modality_names
    full = run_over_seeds(ds, "early", mods, PROFILE["seeds"], experiment="full_model", model_name="early_fusion",
                          **RUN)
    subset_runs = {s: run_over_seeds(ds, "early", sorted(s), PROFILE["seeds"], experiment="subset", **RUN)
                   for s in all_subsets(mods) if 0 < len(s) < len(mods)}
    subset_runs[frozenset(mods)] = full
    return ds, full, subset_runs


def test_untrained_flag_lands_in_drop_records_table_and_text(untrained_runs, tmp_path):
    ds, full, subset_runs = untrained_runs
    writer = RecordWriter("99_test", ds.name, tmp_path)
    drops = drop_ablation(full, subset_runs, metric="r2", writer=writer)
    flags = {r["condition"]: r["extra"]["untrained_path"] for r in writer.records}
    assert flags == {"tabular:mask": ["tabular"], "noise:mask": ["noise"], "tabular:zero": [], "tabular:mean": [],
                     "noise:zero": [], "noise:mean": []}
    assert drops.values["untrained_path"] == ["noise", "tabular"]
    assert drops.table[("mask path", "untrained path")].tolist() == [True, True]
    assert "**untrained path**" in drops.text and "relies most" not in drops.text
    assert "are not findings" in drops.text


def test_shapley_auto_uses_interventional_when_a_path_is_untrained(untrained_runs, tmp_path):
    ds, full, subset_runs = untrained_runs
    writer = RecordWriter("99_test", ds.name, tmp_path)
    shap = shapley_ablation(full, subset_runs, metric="r2", writer=writer, draws=4)
    assert set(shap.long["method"]) == {"interventional", "retrain"} and shap.values["method"] == ["interventional"]
    assert {r["condition"].split(":")[0] for r in writer.records} == {"interventional", "retrain"}
    assert all(r["extra"]["shapley_method"] == r["condition"].split(":")[0] for r in writer.records)
    assert all(r["extra"]["untrained_path"] == [] for r in writer.records)
    assert "interventional" in shap.text and ("agree in sign" in shap.text or "differ in sign" in shap.text)
    agree = shap.values["agreement"]
    assert list(agree["method"]) == ["interventional"] and agree["same_ranking"].dtype == bool
    forced = RecordWriter("99_test", ds.name, tmp_path)
    masked = shapley_ablation(full, subset_runs, metric="r2", writer=forced, method="mask")
    assert masked.values["method"] == ["mask"] and masked.values["untrained_path"] == ["noise", "tabular"]
    assert {tuple(r["extra"]["untrained_path"]) for r in forced.records
            if r["extra"]["shapley_method"] == "mask"} == {("noise", "tabular")}
    assert "not findings" in masked.text
    with pytest.raises(MMLibError, match="unknown method"):
        shapley_ablation(full, subset_runs, metric="r2", writer=forced, method="masking")


def test_drop_text_composes_flags_from_the_table():
    rows = []
    for seed in (0, 1):
        for m, retr, mask, untrained in (("a", 0.30, 0.40, False), ("b", 0.05, 0.90, False), ("c", 0.01, 5.0, True)):
            rows.append({"modality": m, "ablation": "retrain without", "seed": seed, "score": 0.6 - retr,
                         "drop": retr, "constant": 0.0, "untrained_path": False})
            rows.append({"modality": m, "ablation": "drop at inference (mask)", "seed": seed, "score": 0.6 - mask,
                         "drop": mask, "constant": 0.0, "untrained_path": untrained})
    long = pd.DataFrame(rows)
    text = drop_text(long, "r2")
    c_part = text.split("**c**:")[1].split(";")[1]
    assert "**untrained path**" in c_part and "worse than a constant prediction (0.000)" in c_part
    assert "masking it in the trained model costs 0.900 and leaves -0.300, worse than a constant" in text
    assert "relies most on **b**" in text  # the largest masked drop among trained paths, not c's 5.0
    assert "Masked figures for c are not findings" in text
    all_untrained = drop_text(long.assign(untrained_path=long["ablation"] != "retrain without"), "r2")
    assert "relies most" not in all_untrained and "Masked figures for a, b, c are not findings" in all_untrained


def test_shapley_agreement_sign_and_ranking():
    long = pd.DataFrame([
        {"method": "retrain", "modality": "text", "shapley": 0.5},
        {"method": "retrain", "modality": "tab", "shapley": 0.01},
        {"method": "mask", "modality": "text", "shapley": -2.2}, {"method": "mask", "modality": "tab", "shapley": 2.7},
        {"method": "interventional", "modality": "text", "shapley": 0.4},
        {"method": "interventional", "modality": "tab", "shapley": 0.05},
        {"method": "planted (ceilings)", "modality": "text", "shapley": 0.5},
        {"method": "planted (ceilings)", "modality": "tab", "shapley": 0.0},
    ])
    agree = shapley_agreement(long).set_index("method")
    assert list(agree.index) == ["mask", "interventional"]
    assert not agree.loc["mask", "same_sign"] and agree.loc["mask", "sign_differs"] == ["text"]
    assert not agree.loc["mask", "same_ranking"] and agree.loc["mask", "max_abs_diff"] == pytest.approx(2.7)
    assert agree.loc["interventional", "same_sign"] and agree.loc["interventional", "same_ranking"]
    text = agreement_text(shapley_agreement(long))
    assert "The mask and retrain Shapley values differ in sign for text and rank them differently" in text
    assert "The interventional and retrain Shapley values agree in sign for every modality and rank the " \
           "modalities the same (text > tab)" in text
