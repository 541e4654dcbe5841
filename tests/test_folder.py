"""The folder loader: a round trip through the seed-000 layout, and clear errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmlib.data import load_dataset
from mmlib.data.spacecraft import dataset_from_sample, generate, write_folder
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
    loaded = _load(csv)
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
    with pytest.raises(MMLibError, match=r"row 7 not found: .*000007\.png"):
        _load(csv)
    ds = _load(csv, missing_images="absent")
    assert not ds.modalities["image"].present[7] and ds.modalities["image"].present.sum() == 119


def test_corrupt_png_names_file(layout, tmp_path):
    csv = _copy_layout(layout, tmp_path)
    path = csv.parent / "spacecraft_images" / "000003.png"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(MMLibError, match=r"000003\.png \(row 3\) is corrupt or truncated"):
        _load(csv)


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
    with pytest.raises(MMLibError, match=r"'thrust_kn' has 1 NaN/inf value\(s\) \(first at row 5\)"):
        _load(csv)
    with pytest.warns(UserWarning, match="imputed with the training median"):
        ds = _load(csv, nan_policy="impute")
    assert torch.isfinite(ds.modalities["tabular"].tensors["num"]).all()


def test_wrong_column_names(layout):
    _, csv = layout
    with pytest.raises(MMLibError, match=r"\['caption'\] not found"):
        _load(csv, text_column="caption")
    with pytest.raises(MMLibError, match=r"\['nope'\] not found"):
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
