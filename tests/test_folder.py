"""The folder loader: a round trip through the seed-000 layout, ID-like columns, seeded samples,
text encoders, image policies and one validation pass that lists every problem."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmlib.data import load_dataset
from mmlib.analysis.eda import validation_table
from mmlib.data.spacecraft import CAT_COLUMNS, dataset_from_sample, generate, write_folder
from mmlib.utils import MMLibError


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    sample = generate(n=120, seed=4)
    root = tmp_path_factory.mktemp("space")
    csv = write_folder(sample, root)
    return sample, csv


def _load(csv, **kw):
    args = dict(target="target", text_column="description", image_column="image_path", seed=4, cache=False)
    args.update(kw)
    return load_dataset("folder", csv_path=csv, **args)


def test_round_trip_gives_the_same_arrays(layout):
    sample, csv = layout
    direct = dataset_from_sample(sample, split_seed=4)
    cat = [c for c in sample.frame.columns if c in CAT_COLUMNS]
    # the columns listed as the export's spec lists them: registry_number (unique per row) is kept
    loaded = _load(csv, num_columns=[c for c in sample.frame.columns if c not in cat], cat_columns=cat)
    for key in ("train", "val", "test"):
        assert np.array_equal(direct.splits[key], loaded.splits[key])
    assert torch.equal(direct.target, loaded.target)
    for m in ("tabular", "text", "image"):
        for k, t in direct.modalities[m].tensors.items():
            assert torch.equal(t, loaded.modalities[m].tensors[k]), (m, k)


def test_image_cache_is_reused(layout, tmp_path, monkeypatch):
    import mmlib.data.folder as folder

    monkeypatch.setattr(folder, "DATA_CACHE", tmp_path)
    _, csv = layout
    first = _load(csv, cache=True)
    assert list((tmp_path / "images").glob("*.pt"))
    monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = _load(csv, cache=True)
    assert torch.equal(first.modalities["image"].tensors["pixels"], second.modalities["image"].tensors["pixels"])


def _copy_layout(layout, tmp_path):
    import shutil

    _, csv = layout
    shutil.copytree(csv.parent, tmp_path / "copy")
    return tmp_path / "copy" / csv.name


def test_missing_image_names_file_and_row(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    (csv.parent / "spacecraft_images" / "000007.png").unlink()
    with pytest.raises(MMLibError, match=r"image file not found \(e\.g\. spacecraft_images/000007\.png\) "
                                          r"\(first CSV lines: 9\).*missing_images='absent'"):
        _load(csv)
    ds = _load(csv, missing_images="absent")
    assert not ds.modalities["image"].present[7] and ds.modalities["image"].present.sum() == 119


def test_corrupt_png_names_file_and_absent_policy(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    path = csv.parent / "spacecraft_images" / "000003.png"
    path.write_bytes(path.read_bytes()[:40])
    (csv.parent / "spacecraft_images" / "000010.png").write_bytes(b"not a png at all")
    with pytest.raises(MMLibError, match=r"2 row\(s\): image file corrupt or unreadable \(e\.g\. spacecraft_images/"
                                         r"000003\.png\) \(first CSV lines: 5, 12\).*bad_images='absent'"):
        _load(csv)
    ds = _load(csv, bad_images="absent")
    present = ds.modalities["image"].present
    assert not present[3] and not present[10] and int(present.sum()) == 118
    assert (ds.modalities["image"].tensors["pixels"][3] == 0).all()
    table = validation_table(ds)
    assert table.to_dict("records") == [{"column": "'image_path'", "problem": "image file corrupt or unreadable (e.g. "
                                         "spacecraft_images/000003.png)", "rows": 2, "first_csv_lines": "5, 12",
                                         "handled_as": "the row lacks the image"}]
    with pytest.raises(MMLibError, match=r"bad_images='skip'; use one of \('raise', 'absent'\)"):
        _load(csv, bad_images="skip")


def test_wrong_mode_and_size_are_converted_with_a_warning(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    Image.new("L", (50, 40), 128).save(csv.parent / "spacecraft_images" / "000002.png")
    with pytest.warns(UserWarning, match="converted to RGB"):
        ds = _load(csv)
    assert ds.modalities["image"].tensors["pixels"][2].shape == (3, 32, 32)


def test_nan_and_inf_in_numeric_column(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    frame = pd.read_csv(csv)
    frame.loc[5, "thrust_kn"] = np.nan
    frame.loc[9, "dry_mass_t"] = np.inf
    frame.to_csv(csv, index=False)
    with pytest.raises(MMLibError, match=r"2 problem\(s\)") as err:
        _load(csv)
    assert "column 'thrust_kn': 1 row(s): NaN/inf number (first CSV lines: 7)" in str(err.value)
    assert "column 'dry_mass_t': 1 row(s): NaN/inf number (first CSV lines: 11)" in str(err.value)
    with pytest.warns(UserWarning, match="imputed with the training median"):
        ds = _load(csv, nan_policy="impute")
    assert torch.isfinite(ds.modalities["tabular"].tensors["num"]).all()


def test_wrong_column_names(layout):
    _, csv = layout
    with pytest.raises(MMLibError, match=r"column 'caption': column\(s\) not found.*use the CSV's column names: id"):
        _load(csv, text_column="caption")
    with pytest.raises(MMLibError, match=r"'nope': column\(s\) not found"):
        _load(csv, num_columns=["nope"], cat_columns=[])
    with pytest.raises(MMLibError, match="does not exist"):
        _load(csv.parent / "missing.csv")


def test_single_class_target_and_empty_text(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    frame = pd.read_csv(csv)
    frame["label"] = "a"
    frame.loc[0, "description"] = "   "
    frame.to_csv(csv, index=False)
    with pytest.raises(MMLibError, match="single class"):
        _load(csv, target="label", task="multiclass")
    ds = _load(csv)
    assert not ds.modalities["text"].present[0]


def test_id_like_columns_are_left_out_with_one_warning(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    frame = pd.read_csv(csv)
    frame.insert(0, "Unnamed: 0", np.arange(len(frame)))
    frame["ship_id"] = np.arange(len(frame)) % 7          # named like an id, not unique
    frame["serial"] = [f"S-{i * 13:05d}" for i in range(len(frame))]  # text unique per row
    frame.to_csv(csv, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(csv)
    msgs = [str(w.message) for w in caught if "ID-like" in str(w.message)]
    assert len(msgs) == 1
    for name, why in (("Unnamed: 0", "named like an id"), ("id", "named like an id"), ("ship_id", "named like an id"),
                      ("serial", "unique per row"), ("registry_number", "unique per row")):
        assert f"'{name}' ({why})" in msgs[0]
    used = ds.meta["num_columns"] + ds.meta["cat_columns"]
    assert not {"Unnamed: 0", "id", "ship_id", "serial", "registry_number"} & set(used)
    assert {"thrust_kn", "launch_year", "manufacturer"} <= set(used)  # ordinary columns stay
    # listing the columns yourself keeps an ID-like one, without the warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(csv, num_columns=["ship_id", "thrust_kn"], cat_columns=[])
    assert not [w for w in caught if "ID-like" in str(w.message)]
    assert ds.meta["num_columns"] == ["ship_id", "thrust_kn"]


def test_n_rows_is_a_seeded_random_sample(layout):
    _, csv = layout
    a, b, c = _load(csv, n_rows=40), _load(csv, n_rows=40), _load(csv, n_rows=40, seed=5)
    lines = a.meta["csv_lines"]
    assert len(lines) == 40 and list(lines) == sorted(lines) and list(lines) != list(range(2, 42))
    assert list(lines) == list(b.meta["csv_lines"]) and list(lines) != list(c.meta["csv_lines"])
    full = pd.read_csv(csv)
    assert np.allclose(a.target.numpy(), full["target"].to_numpy()[lines - 2])
    assert a.n == 40 and a.modalities["image"].tensors["pixels"].shape[0] == 40


def test_every_problem_is_listed_in_one_error(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    frame = pd.read_csv(csv)
    frame.loc[[4, 8, 20], "target"] = np.nan
    frame.loc[[2, 30], "thrust_kn"] = np.nan
    frame.loc[11, "image_path"] = "spacecraft_images/nowhere.png"
    frame.loc[0, "description"] = "a caption\nthat spans two lines"  # quoted: the later CSV lines shift by one
    frame.to_csv(csv, index=False)
    path = csv.parent / "spacecraft_images" / "000005.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(MMLibError) as err:
        _load(csv, text_column="caption")
    msg = str(err.value)
    assert "has 5 problem(s); nothing was loaded" in msg and "header is line 1" in msg
    assert "column 'caption': column(s) not found" in msg
    assert "column 'target': 3 row(s): target value missing (first CSV lines: 7, 11, 23)" in msg
    assert "column 'thrust_kn': 2 row(s): NaN/inf number (first CSV lines: 5, 33)" in msg
    assert "image file not found (e.g. spacecraft_images/nowhere.png) (first CSV lines: 14)" in msg
    assert "image file corrupt or unreadable (e.g. spacecraft_images/000005.png) (first CSV lines: 8)" in msg
    assert msg.count("To do:") == 5


def test_policies_load_and_the_validation_table_lists_what_they_did(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    frame = pd.read_csv(csv)
    frame.loc[[2, 30], "thrust_kn"] = np.nan
    frame.loc[11, "image_path"] = np.nan
    frame.loc[3, "description"] = ""
    frame.to_csv(csv, index=False)
    with pytest.warns(UserWarning, match="imputed with the training median"):
        ds = _load(csv, nan_policy="impute", missing_images="absent")
    table = validation_table(ds).set_index("column")
    assert table.loc["'thrust_kn'", "first_csv_lines"] == "4, 32" and table.loc["'thrust_kn'", "rows"] == 2
    assert table.loc["'image_path'", "problem"] == "image-path cell empty"
    assert table.loc["'description'", "first_csv_lines"] == "5"
    assert not ds.modalities["image"].present[11] and not ds.modalities["text"].present[3]
    assert len(validation_table(ds)) == 3


def test_text_encoder_minilm_gives_an_embedding_modality(layout, monkeypatch):
    from mmlib.data import sentence

    _, csv = layout
    seen = {}

    def fake_encode(texts, model_name=sentence.DEFAULT_MODEL, cache_key=None, progress=True, **kw):
        seen["n"], seen["key"], seen["model"] = len(texts), cache_key, model_name
        return np.ones((len(texts), 768 if "mpnet" in model_name else 384), dtype=np.float32)

    monkeypatch.setattr(sentence, "encode_texts", fake_encode)
    ds = _load(csv, text_encoder="minilm")
    text = ds.modalities["text"]
    assert text.kind == "embedding" and tuple(text.tensors["x"].shape) == (120, 384)
    assert seen == {"n": 120, "key": f"folder-{csv.stem}", "model": "all-MiniLM-L6-v2"}
    assert ds.meta["text_encoder"] == "minilm" and text.info["model"] == "all-MiniLM-L6-v2"
    mp = _load(csv, text_encoder="mpnet")
    assert seen["model"] == "all-mpnet-base-v2" and tuple(mp.modalities["text"].tensors["x"].shape) == (120, 768)
    assert mp.modalities["text"].info["model"] == "all-mpnet-base-v2" and mp.meta["text_encoder"] == "mpnet"
    assert _load(csv, text_encoder="gru").modalities["text"].kind == "text"  # the profiles' name for tokens
    with pytest.raises(MMLibError, match=r"text_encoder='bert'; use one of \('tokens', 'minilm', 'minilm_finetune', 'mpnet'"):
        _load(csv, text_encoder="bert")


def test_text_encoder_tfidf_gives_an_ngram_bag_beside_the_embedding(layout, monkeypatch):
    from mmlib.data import sentence
    from mmlib.models import build_model

    _, csv = layout
    monkeypatch.setattr(sentence, "encode_texts", lambda texts, model_name=sentence.DEFAULT_MODEL, **kw:
                        np.arange(len(texts) * 4, dtype=np.float32).reshape(len(texts), 4))
    bag = _load(csv, text_encoder="tfidf").modalities["text"]
    assert bag.kind == "text" and set(bag.tensors) == {"tokens", "weights"} and bag.info["encoder_arch"] == "tfidf"
    ds = _load(csv, text_encoder="mpnet+tfidf")
    text = ds.modalities["text"]
    assert set(text.tensors) == {"tokens", "weights", "x"} and text.info["model"] == "all-mpnet-base-v2"
    assert torch.equal(text.tensors["tokens"], bag.tensors["tokens"])  # the same bag, fitted on the same train rows
    assert torch.equal(text.tensors["x"][:, 0], torch.arange(120, dtype=torch.float32) * 4)
    assert text.info["vocab_size"] - 1 == len(text.info["tfidf"].vectorizer.vocabulary_)
    model = build_model(ds, "early")  # the sparse text encoder reads it
    out = model({m: {k: t[:5] for k, t in mod.tensors.items()} for m, mod in ds.modalities.items()},
                {m: mod.present[:5] for m, mod in ds.modalities.items()})
    assert out["pred"].shape[0] == 5
