"""Dataset spec files (mmlib.data.spec): reading and its errors, a spec path wherever a dataset
name is taken, the spacecraft export, and the report runner's --data."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mmlib.reporting.runner as runner
from mmlib.data import (default_target, get_loader, load_dataset, load_for_profile, other_targets, read_spec,
                        required_parameters, resolve_dataset)
from mmlib.data.export import export_spacecraft, main as export_main
from mmlib.data.folder import load_folder
from mmlib.data.spacecraft import dataset_from_sample, generate
from mmlib.data.spec import write_spec
from mmlib.training.profiles import get_profile
from mmlib.utils import MMLibError

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_spacecraft(tmp_path_factory.mktemp("export"), n_rows=60, seed=3, name="ships")


def _spec(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_export_writes_csv_images_and_a_spec_that_reloads_the_same_data(export):
    folder = export.parent
    assert export.name == "ships.toml" and (folder / "candidates_data.csv").is_file()
    assert len(list((folder / "spacecraft_images").glob("*.png"))) == 60
    ds = load_dataset(str(export))
    direct = dataset_from_sample(generate(n=60, seed=3), split_seed=3)
    assert ds.name == "ships" and ds.meta["spec"] == str(export)
    assert torch.allclose(ds.target, direct.target) and np.array_equal(ds.splits["test"], direct.splits["test"])
    for m in ("tabular", "text", "image"):
        assert ds.modalities[m].kind == direct.modalities[m].kind
        for k, t in direct.modalities[m].tensors.items():
            assert torch.equal(t, ds.modalities[m].tensors[k]), (m, k)


def test_export_cli(tmp_path, capsys):
    assert export_main(["spacecraft", str(tmp_path / "out"), "--n-rows", "20", "--name", "tiny"]) == 0
    assert "--data" in capsys.readouterr().out and read_spec(tmp_path / "out" / "tiny.toml").name == "tiny"
    assert export_main(["spacecraft", str(tmp_path / "x"), "--n-rows", "3"]) == 2


def test_export_as_classification(tmp_path):
    spec = export_spacecraft(tmp_path, n_rows=60, seed=2, name="ships_cls", classes=3)
    assert export_main(["spacecraft", str(tmp_path / "y"), "--n-rows", "20", "--classes", "1"]) == 2
    ds = load_dataset(resolve_dataset(str(spec)))
    assert ds.task == "multiclass" and np.bincount(ds.target.numpy().astype(int)).tolist() == [20, 20, 20]
    frame = pd.read_csv(tmp_path / "candidates_data.csv")
    assert {"target", "target_class"} <= set(frame.columns)
    assert not {"target", "target_class"} & set(read_spec(spec).params["num_columns"])
    # the classes are the target's quantile bins: class means are ordered
    means = frame.groupby("target_class")["target"].mean()
    assert means.is_monotonic_increasing


def test_a_spec_path_works_wherever_a_dataset_name_does(export, tmp_path):
    assert resolve_dataset(str(export)) == "ships" and resolve_dataset("ships") == "ships"
    assert get_loader(str(export)) is load_folder and required_parameters("ships") == []
    assert default_target("ships") == "target" and other_targets("ships") == []
    smoke = get_profile("smoke")
    assert load_for_profile("ships", smoke).n == 60  # the profile's n_rows (800) is a cap
    capped = _spec(tmp_path, export.read_text().replace('name = "ships"', 'name = "ships30"') + "n_rows = 30\n"
                   + 'other_targets = ["crew_size"]\n')
    capped.with_name("candidates_data.csv").symlink_to(export.parent / "candidates_data.csv")
    capped.with_name("spacecraft_images").symlink_to(export.parent / "spacecraft_images")
    assert load_for_profile(str(capped), smoke).n == 30
    assert load_for_profile(str(capped), dict(smoke, n_rows=20)).n == 20  # the smaller of the two
    assert other_targets(str(capped)) == ["crew_size"]
    ds = load_for_profile("ships30", smoke, target="crew_size")  # explicit overrides win over the spec
    assert ds.target_name == "crew_size" and ds.name == "ships30"
    with pytest.raises(MMLibError, match=r"Unknown dataset 'nope.csv'.*or the path of a dataset spec file"):
        resolve_dataset("nope.csv")


def test_paths_are_relative_to_the_spec_file(export, tmp_path, monkeypatch):
    sub = tmp_path / "specs"
    sub.mkdir()
    spec = _spec(sub, 'name = "rel"\nloader = "folder"\ncsv_path = "../data/candidates_data.csv"\ntarget = "target"\n'
                      'num_columns = ["thrust_kn"]\ncat_columns = []\n')
    (tmp_path / "data").symlink_to(export.parent)
    monkeypatch.chdir(FIXTURES)  # anywhere else
    s = read_spec(spec)
    assert s.params["csv_path"] == str((tmp_path / "data" / "candidates_data.csv").resolve())
    assert load_dataset(str(spec)).n == 60


def test_unknown_keys_are_refused_with_the_valid_ones(tmp_path, export):
    spec = _spec(tmp_path, f'name = "x"\nloader = "folder"\ncsv_file = "{export.parent}/candidates_data.csv"\n'
                           'target = "target"\nbad_image = "absent"\n')
    with pytest.raises(MMLibError, match=r"unknown key\(s\) \['csv_file', 'bad_image'\]\. Valid keys for loader "
                                         r"'folder': name, loader, other_targets, csv_path, target, .*bad_images"):
        read_spec(spec)


def test_missing_files_bad_loader_and_bad_names(tmp_path, export):
    with pytest.raises(MMLibError, match=r"dataset spec .*nowhere\.toml does not exist"):
        read_spec(tmp_path / "nowhere.toml")
    spec = _spec(tmp_path, 'name = "x"\nloader = "folder"\ncsv_path = "data/missing.csv"\ntarget = "y"\n')
    with pytest.raises(MMLibError, match=r"csv_path = 'data/missing\.csv' -> .*/data/missing\.csv does not exist "
                                         r"\(paths are relative to the spec file's folder\)"):
        read_spec(spec)
    with pytest.raises(MMLibError, match=r"unknown loader 'xlsx'\. Registered loaders: clothing, embeddings, folder, "
                                         r"spacecraft"):
        read_spec(_spec(tmp_path, 'name = "x"\nloader = "xlsx"\n'))
    with pytest.raises(MMLibError, match=r"the key 'name' is missing"):
        read_spec(_spec(tmp_path, 'loader = "folder"\n'))
    with pytest.raises(MMLibError, match=r"name 'spacecraft' is a built-in dataset"):
        read_spec(_spec(tmp_path, 'name = "spacecraft"\nloader = "spacecraft"\n'))
    with pytest.raises(MMLibError, match=r"name 'my data' must be letters"):
        read_spec(_spec(tmp_path, 'name = "my data"\nloader = "spacecraft"\n'))
    csv = export.parent / "candidates_data.csv"
    with pytest.raises(MMLibError, match=r"loader 'folder' needs the key\(s\) \['target'\]"):
        read_spec(_spec(tmp_path, f'name = "x"\nloader = "folder"\ncsv_path = "{csv}"\n'))
    with pytest.raises(MMLibError, match=r"is not valid TOML"):
        read_spec(_spec(tmp_path, 'name = "x\nloader = \n'))


def test_an_npz_path_is_its_own_embeddings_spec(tmp_path):
    g = np.random.default_rng(0)
    path = tmp_path / "vectors.npz"
    np.savez(path, text=g.normal(size=(40, 5)), image=g.normal(size=(40, 3)), target=g.normal(size=40))
    assert resolve_dataset(str(path)) == "vectors"
    ds = load_dataset(str(path))
    assert ds.name == "vectors" and set(ds.modality_names) == {"text", "image"} and ds.n == 40


def test_write_spec_round_trips(tmp_path):
    path = write_spec(tmp_path / "w.toml", "w", "spacecraft", n=50, shares=None, modalities=["text", "image"],
                      progress=False)
    s = read_spec(path)
    assert (s.name, s.loader, s.params) == ("w", "spacecraft", {"n": 50, "modalities": ["text", "image"],
                                                                 "progress": False})


# --------------------------------------------------------------------------- the runner's --data

def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = runner.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_runner_runs_each_spec_into_its_name(export, tmp_path, monkeypatch):
    calls = []

    def fake_run_notebook(nb_path, dataset, declared, extras, **kw):
        calls.append((nb_path.stem, dataset, kw["dataset_arg"]))
        return runner.NotebookResult(dataset, nb_path.stem, "ok", 0.1, "cpu")

    monkeypatch.setattr(runner, "run_notebook", fake_run_notebook)
    rc, out, err = _run_cli("--profile", "smoke", "--data", str(export), "--notebooks-dir", str(FIXTURES),
                            "--out-dir", str(tmp_path / "r"), "--allow-dirty")
    assert rc == 0, err
    assert calls == [("00_alpha", "ships", str(export)), ("10_beta", "ships", str(export))]  # only the spec
    calls.clear()
    rc, _, err = _run_cli("--profile", "smoke", "--datasets", "spacecraft", str(export), "--notebooks-dir",
                          str(FIXTURES), "--notebooks", "00", "--out-dir", str(tmp_path / "r"), "--allow-dirty")
    assert rc == 0, err
    assert calls == [("00_alpha", "spacecraft", "spacecraft"), ("00_alpha", "ships", str(export))]


def test_runner_checks_specs_before_running_anything(export, tmp_path):
    bad = _spec(tmp_path, 'name = "x"\nloader = "folder"\ncsv = "a.csv"\n')
    out = tmp_path / "r"
    rc, _, err = _run_cli("--profile", "smoke", "--data", str(export), str(bad), "--notebooks-dir", str(FIXTURES),
                          "--out-dir", str(out), "--allow-dirty")
    assert rc == 2 and err.startswith("error: ") and "unknown key(s) ['csv']" in err and not out.exists()
    twin = _spec(tmp_path, export.read_text().replace("candidates_data.csv", str(export.parent / "candidates_data.csv")),
                 "twin.toml")
    rc, _, err = _run_cli("--profile", "smoke", "--data", str(export), str(twin), "--notebooks-dir", str(FIXTURES),
                          "--out-dir", str(out), "--allow-dirty")
    assert rc == 2 and "same reports folder: ships" in err and not out.exists()
