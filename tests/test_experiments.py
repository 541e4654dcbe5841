"""mmlib.analysis.imbalance (weaken, remedies, contribution table) and mmlib.training.experiments
(run_fusion records, reproducibility, summary tables)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_dataset
from mmlib.training.experiments import run_fusion, run_over_seeds, summary_table, train_config_from_profile
from mmlib.analysis.imbalance import BASE_MODEL, REMEDIES, contribution_table, weaken
from mmlib.models import build_model
from mmlib.reporting.records import RECORD_FIELDS, RecordWriter
from mmlib.training.trainer import TrainConfig
from mmlib.utils import MMLibError

PROFILE = {"seeds": [0], "epochs": 2, "patience": None, "batch_size": 64, "max_batches_per_epoch": None}
RUN = dict(profile=PROFILE, notebook="99_test", experiment="unit", device="cpu", progress=False)


@pytest.fixture(scope="module")
def ds():
    return make_tiny_dataset()


def _snapshot(ds):
    return {m: ({k: t.clone() for k, t in mod.tensors.items()}, mod.present.clone())
            for m, mod in ds.modalities.items()}


def _assert_unchanged(ds, snap):
    for m, (tensors, present) in snap.items():
        assert torch.equal(ds.modalities[m].present, present)
        for k, t in tensors.items():
            assert torch.equal(ds.modalities[m].tensors[k], t)


# ---------------------------------------------------------------------- weaken
def test_weaken_fewer_rows_touches_only_train_rows(ds):
    snap = _snapshot(ds)
    weak = weaken(ds, "image", "fewer_rows", 0.8, seed=0)
    _assert_unchanged(ds, snap)
    assert "weakened" not in ds.meta and weak.meta["weakened"]["how"] == "fewer_rows"
    before, after = ds.modalities["image"].present, weak.modalities["image"].present
    changed = np.flatnonzero((before != after).numpy())
    assert len(changed) > 0.5 * len(ds.splits["train"])
    assert set(changed) <= set(ds.splits["train"])  # val / test untouched
    assert not (after & ~before).any()  # never adds a modality
    assert not weak.modalities["image"].tensors["pixels"][changed].any()  # removed rows hold zeros
    for other in ("tabular", "text"):  # other modalities are the very same objects
        assert weak.modalities[other] is ds.modalities[other]
    anyp = torch.stack([weak.modalities[m].present for m in weak.modalities], 1).any(1)
    assert anyp.all()  # every row keeps one modality
    assert torch.equal(weaken(ds, "image", "fewer_rows", 0.8, seed=0).modalities["image"].present, after)


def test_weaken_corrupt_changes_every_split_of_one_modality(ds):
    snap = _snapshot(ds)
    weak = weaken(ds, "tabular", "corrupt", 0.5, seed=1)
    _assert_unchanged(ds, snap)
    num_old, num_new = ds.modalities["tabular"].tensors["num"], weak.modalities["tabular"].tensors["num"]
    present = ds.modalities["tabular"].present
    for split in ("train", "val", "test"):
        rows = torch.as_tensor(ds.splits[split])
        rows = rows[present[rows]]
        assert (num_new[rows] != num_old[rows]).all(dim=1).float().mean() > 0.9
    assert not num_new[~present].any()
    assert torch.equal(weak.modalities["tabular"].present, present)
    assert weak.modalities["text"] is ds.modalities["text"]
    same = weaken(ds, "tabular", "corrupt", 0.0)
    assert torch.equal(same.modalities["tabular"].tensors["num"], num_old)


def test_weaken_truncate_text(ds):
    weak = weaken(ds, "text", "truncate", 0.5)
    tok_old, tok_new = ds.modalities["text"].tensors["tokens"], weak.modalities["text"].tensors["tokens"]
    lengths_old, lengths_new = (tok_old != 0).sum(1), (tok_new != 0).sum(1)
    expected = torch.floor(0.5 * lengths_old.double() + 0.5).long()
    assert torch.equal(lengths_new, expected)
    keep = tok_new != 0
    assert torch.equal(tok_new[keep], tok_old[keep])  # a prefix of each text is kept
    with pytest.raises(MMLibError, match="text modality"):
        weaken(ds, "image", "truncate", 0.5)
    with pytest.raises(MMLibError, match="Unknown way"):
        weaken(ds, "text", "shuffle", 0.5)


def test_remedies_configure_model_and_trainer(ds):
    assert set(REMEDIES) == {"none", "modality_dropout", "aux_losses", "ogm_ge", "ogm_ge_smooth"}
    for name, (model_kwargs, train_kwargs) in REMEDIES.items():
        model = build_model(ds, "early", **{**BASE_MODEL, **model_kwargs})
        cfg = train_config_from_profile(PROFILE, **train_kwargs)
        assert isinstance(cfg, TrainConfig)
        assert (model.modality_dropout > 0) == (name == "modality_dropout")  # "none" means no dropout at all
        assert (model.aux is not None) == (name in ("aux_losses", "ogm_ge_smooth"))
        out = model(*(lambda b: (b["inputs"], b["present"]))(ds.batch(ds.splits["train"][:8])))
        assert set(out["contributions"]) == set(model.modalities)  # the paper's concatenation fusion
    assert REMEDIES["aux_losses"][1]["aux_weight"] > 0 and REMEDIES["ogm_ge"][1]["ogm_alpha"] > 0
    assert REMEDIES["ogm_ge"][1].get("ogm_variant", "published") == "published"
    assert REMEDIES["ogm_ge_smooth"][1]["ogm_variant"] == "smooth"


def test_contribution_table_from_history():
    hist = pd.DataFrame({"epoch": [1, 2], "val_r2": [0.5, 0.7], "val_r2_without_text": [0.4, 0.3],
                         "val_r2_without_image_raw": [0.5, 0.6], "val_r2_head_text": [0.1, 0.2],
                         "ogm_coef_text": [0.9, 0.8], "train_loss": [1.0, 0.5]})
    t = contribution_table(hist)
    assert list(t.columns) == ["epoch", "modality", "quantity", "value"] and t.attrs["metric"] == "r2"
    contrib = t[(t.quantity == "contribution") & (t.modality == "text")]
    assert contrib["value"].tolist() == pytest.approx([0.1, 0.4])
    assert set(t.quantity) == {"without", "contribution", "head", "ogm_coef"}
    assert set(t.modality) == {"text", "image_raw"}
    roc = pd.DataFrame({"epoch": [1], "val_roc_auc": [0.8], "val_roc_auc_without_tab": [0.6]})
    t = contribution_table(roc)
    assert t.attrs["metric"] == "roc_auc" and set(t.modality) == {"tab"}
    assert contribution_table(pd.DataFrame({"epoch": [1], "train_loss": [1.0]})).empty


# ----------------------------------------------------------------- experiments
def test_train_config_from_profile():
    cfg = train_config_from_profile(PROFILE, lr=1e-3)
    assert (cfg.epochs, cfg.batch_size, cfg.patience, cfg.lr) == (2, 64, None, 1e-3)
    with pytest.raises(MMLibError, match="Unknown training option"):
        train_config_from_profile(PROFILE, learning_rate=1e-3)


def test_run_fusion_record_and_reproducibility(ds, tmp_path):
    writer = RecordWriter("99_test", ds.name, tmp_path)
    a = run_fusion(ds, "early", ["text", "tabular"], seed=3, writer=writer, condition="clean", **RUN)
    rec = a.record
    assert list(rec) == list(RECORD_FIELDS) and len(writer) == 1 and writer.records[0] == rec
    assert rec["model"] == "early_fusion" and rec["fusion"] == "early" and rec["modalities"] == ["tabular", "text"]
    assert rec["seed"] == 3 and rec["condition"] == "clean" and rec["device"] == "cpu" and rec["epochs"] == 2
    assert rec["n_params"] == a.model.param_counts()["total"] and rec["train_time_s"] > 0
    for split in ("train", "val", "test"):
        for m in ("r2", "rmse", "mae", "smape"):
            assert f"{split}_{m}" in rec["metrics"]
    assert rec["metrics"]["test_r2"] == pytest.approx(a.trainer.evaluate("test")["r2"])
    assert a.metrics["val"]["r2"] == rec["metrics"]["val_r2"]
    json.dumps(rec)  # a record is plain JSON
    b = run_fusion(ds, "early", ["text", "tabular"], seed=3, **RUN)
    assert b.record["metrics"] == rec["metrics"]  # same seed, same numbers (CPU)
    saved = json.loads(writer.save().read_text())
    assert saved["records"][0]["metrics"]["test_r2"] == pytest.approx(rec["metrics"]["test_r2"])


def test_run_over_seeds_with_tracking_and_remedy(ds):
    model_kwargs, train_kwargs = REMEDIES["ogm_ge"]
    runs = run_over_seeds(ds, "late", ["tabular", "text"], seeds=[0, 1], model_kwargs=model_kwargs,
                          train_kwargs={**train_kwargs, "track_modalities": True}, model_name="late_ogm", **RUN)
    assert [r.record["seed"] for r in runs] == [0, 1]
    assert runs[0].record["model"] == "late_ogm" and runs[0].record["modalities"] == ["tabular", "text"]
    assert runs[0].record["metrics"] != runs[1].record["metrics"]
    t = contribution_table(runs[0].fit)
    assert {"without", "contribution", "head", "ogm_coef"} <= set(t.quantity)
    assert set(t.modality) == {"tabular", "text"} and set(t.epoch) == {1, 2}
    with pytest.raises(MMLibError, match="own argument"):
        run_fusion(ds, "early", ["text"], seed=0, model_kwargs={"fusion": "late"}, **RUN)


def test_summary_table():
    recs = []
    for model, base in (("a_only", 0.5), ("early_fusion", 0.8)):
        for seed in (0, 1, 2):
            recs.append(dict(notebook="99_test", experiment="unit", dataset="tiny", model=model, fusion="early",
                             modalities=["a"] if model == "a_only" else ["a", "b"], condition="", seed=seed,
                             metrics={"test_r2": base + 0.01 * seed, "val_r2": base, "test_recovered_x": 1.0},
                             n_params=100, train_time_s=1.0 + seed, epochs=5, device="cpu", extra={}))
    t = summary_table(recs)
    assert list(t.index.names) == ["model", "fusion", "modality_set", "condition"]
    assert list(t.columns[:2]) == ["test_r2_mean", "test_r2_std"]  # recovered_* left out by default
    row = t.loc[("early_fusion", "early", "a+b", "")]
    assert row["test_r2_mean"] == pytest.approx(0.81) and row["test_r2_std"] == pytest.approx(0.01)
    assert row["n"] == 3 and row["n_params"] == 100 and row["train_time_s"] == pytest.approx(2.0)
    same = summary_table(pd.DataFrame(recs), metrics=("metric_test_r2", "val_r2"), by=("model",))
    assert list(same.index) == ["a_only", "early_fusion"] and "val_r2_mean" in same
    with pytest.raises(MMLibError, match="no metric"):
        summary_table(recs, metrics=("test_auc",))


def test_imbalance_experiment_compares_remedies_within_each_condition(ds, tmp_path):
    from mmlib.analysis.imbalance import MASKED_EXPERIMENT, imbalance_conditions, imbalance_experiment

    cond = imbalance_conditions(ds, "text", 0.8, 0.5, 0.5)[1:2]  # text corrupted
    remedies = {k: REMEDIES[k] for k in ("none", "modality_dropout")}
    writer = RecordWriter("50_modality_imbalance", ds.name, tmp_path, data=ds)
    imb = imbalance_experiment(ds, cond, remedies, profile={**PROFILE, "seeds": [0, 1], "epochs": 1, "max_batches_per_epoch": 2},
                               notebook="50_modality_imbalance",
                               device="cpu", writer=writer, metric="r2", weak="text", n_boot=100)
    recs = writer.records
    assert len(recs) == 2 * 2 * 2 * 2  # (clean + 1 condition) x 2 remedies x 2 seeds, each scored twice
    assert {(r["condition"], r["model"]) for r in recs} == {(c, m) for c in ("clean", cond[0]["label"])
                                                           for m in remedies}  # the clean data for every remedy
    masked = [r for r in recs if r["experiment"] == MASKED_EXPERIMENT]
    main = [r for r in recs if r["experiment"] == "imbalance"]
    assert len(masked) == len(main) == 8 and len(writer._predictions) == 16
    by_key = {(r["condition"], r["model"], r["seed"]): r for r in main}
    for r in masked:
        m = by_key[(r["condition"], r["model"], r["seed"])]
        assert r["metrics"]["test_r2"] == pytest.approx(m["metrics"]["test_without_weak"])
        assert m["extra"]["masked_modality"] == "text"
    t = imb.values["remedies"]
    assert set(t.index) == {("clean", "modality_dropout"), (cond[0]["label"], "modality_dropout")}
    assert set(t["method"]) == {"bootstrap"} and set(t["verdict"]) <= {"helps", "hurts", "not separable"}
    assert "Against no remedy with text masked at test time" in imb.text and cond[0]["label"] in imb.values["verdicts"]
