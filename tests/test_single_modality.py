"""Notebook 40's top fusion retrained on each modality alone: choosing it on validation, the
summary of what the other modalities add in that architecture, and the postmortem sentence."""
from __future__ import annotations

import pytest

from mmlib.analysis import summaries
from mmlib.analysis.postmortem import build_postmortem
from mmlib.reporting.records import make_record, records_to_frame

NB = "40_fusion_variants"


def _rec(experiment, model, fusion, seed, test, val, modalities=("tabular", "text"), notebook=NB):
    return make_record(notebook=notebook, dataset="clothing", experiment=experiment, model=model, fusion=fusion,
                       modalities=list(modalities), condition="", seed=seed,
                       metrics={"test_r2": test, "val_r2": val}, n_params=10, train_time_s=1.0, epochs=1, device="cpu")


def _records(full_test=0.60, text_test=0.65):
    seeds = (0, 1, 2)
    recs = [_rec("fusion_variant", "early", "early", s, 0.70 + 0.001 * s, 0.50) for s in seeds]  # best on test
    recs += [_rec("fusion_variant", "learned_weights", "learned_weights", s, full_test + 0.001 * s, 0.60)
             for s in seeds]  # best on validation
    name = summaries.single_modality_name
    recs += [_rec(summaries.SINGLE_MODALITY_EXPERIMENT, name("learned_weights", "text"), "learned_weights", s,
                  text_test + 0.001 * s, 0.6, modalities=("text",)) for s in seeds]
    recs += [_rec(summaries.SINGLE_MODALITY_EXPERIMENT, name("learned_weights", "tabular"), "learned_weights", s,
                  0.01 + 0.001 * s, 0.0, modalities=("tabular",)) for s in seeds]
    return recs


def test_top_by_validation_ignores_the_test_split():
    recs = _records()
    assert summaries.top_by_validation(recs, "r2") == "learned_weights"
    assert summaries.top_by_validation(recs, "r2", higher_is_better=False) == "early"
    with pytest.raises(ValueError, match="no 'nothing' record"):
        summaries.top_by_validation(recs, "r2", experiment="nothing")


@pytest.mark.parametrize("full_test, text_test, verdict, words", [
    (0.60, 0.65, "worse", "learned_weights[text] is better"),
    (0.70, 0.65, "better", "pays off"),
])
def test_modality_gain_summary_says_what_the_other_modalities_add(full_test, text_test, verdict, words):
    s = summaries.modality_gain_summary(_records(full_test, text_test), "learned_weights", "r2")
    assert s.values["best_single"] == "learned_weights[text]"
    assert s.values["interval"]["verdict"] == verdict
    assert s.values["interval"]["delta"] == pytest.approx(full_test - text_test, abs=1e-9)
    assert words in s.text
    assert list(s.table.index) == ["learned_weights", "learned_weights[text]", "learned_weights[tabular]"]
    assert s.table.loc["learned_weights", "verdict"] == "all modalities"


def test_modality_gain_summary_is_none_without_single_modality_runs():
    recs = [r for r in _records() if r["experiment"] == "fusion_variant"]
    assert summaries.modality_gain_summary(recs, "learned_weights", "r2") is None


def test_postmortem_counts_the_single_modality_versions_as_unimodal_systems():
    recs = _records(full_test=0.60, text_test=0.65)
    recs += [_rec("unimodal", "text_only", "early", s, 0.55 + 0.001 * s, 0.5, modalities=("text",),
                  notebook="10_unimodal_baselines") for s in (0, 1, 2)]
    q1 = build_postmortem(records_to_frame(recs), "clothing").sections[0]
    assert "The best unimodal system is **learned_weights[text]**" in q1.text
    assert ("The same architecture on one modality: learned_weights against learned_weights[text]" in q1.text
            and "the single-modality version is better" in q1.text)
    assert q1.table.loc["learned_weights[text]", "kind"] == "network"
