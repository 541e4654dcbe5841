"""Provenance of result records and report runs: profile, seed offset, dataset fingerprint,
commit (refused / marked when dirty), run ids, and the test-split predictions saved beside
the records. The runner tests here fake papermill (no kernel starts): the fake "notebook"
writes records through a RecordWriter into the staging folder the runner gives it."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest

from mmlib.reporting import runner
from mmlib.reporting.records import (PREDICTIONS_SUFFIX, RECORD_FIELDS, RecordWriter, git_commit, git_state,
                                     load_predictions, load_records, load_test_targets, make_record,
                                     read_records_file)
from mmlib.training.profiles import get_profile
from mmlib.utils import MMLibError


def _rec(**kw):
    base = dict(experiment="e", model="mlp", modalities=["tabular"], seed=0, metrics={"test_r2": 0.5})
    base.update(kw)
    return base


# --------------------------------------------------------------------------- profiles: seed_offset

def test_seed_offset_shifts_every_seed_and_is_recorded():
    base, shifted = get_profile("standard"), get_profile("standard", seed_offset=10)
    assert shifted["seeds"] == [s + 10 for s in base["seeds"]] == [10, 11, 12]
    assert shifted["seed_offset"] == 10 and shifted["name"] == "standard" and base["seed_offset"] == 0
    assert get_profile("smoke", seeds=[4], seed_offset=2)["seeds"] == [6]  # applied after the overrides
    assert {k: v for k, v in shifted.items() if "seed" not in k} == {k: v for k, v in base.items() if "seed" not in k}
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(MMLibError, match="seed_offset"):
            get_profile("smoke", seed_offset=bad)


# --------------------------------------------------------------------------- records: provenance fields

def test_provenance_fields_have_defaults_and_are_validated():
    r = make_record(notebook="10_x", dataset="d", **_rec())
    assert list(r) == list(RECORD_FIELDS)
    assert r["seed_offset"] == 0 and all(r[k] is None for k in ("run_id", "profile", "dataset_fingerprint",
                                                                  "git_commit"))
    with pytest.raises(MMLibError, match="seed_offset"):
        make_record(notebook="10_x", dataset="d", seed_offset=-1, **_rec())
    with pytest.raises(MMLibError, match="profile"):
        make_record(notebook="10_x", dataset="d", profile="", **_rec())


@pytest.fixture(scope="module")
def small_ds():
    from mmlib.data import load_dataset
    return load_dataset("spacecraft", n_rows=300)


def test_writer_fills_provenance(tmp_path, small_ds):
    from mmlib.training.runcache import dataset_fingerprint

    P = get_profile("smoke", seed_offset=3)
    w = RecordWriter("10_x", "spacecraft", tmp_path, profile=P, data=small_ds)
    r = w.add(**_rec(seed=P["seeds"][0]))
    assert r["profile"] == "smoke" and r["seed_offset"] == 3 and r["seed"] == 3
    assert isinstance(r["dataset_fingerprint"], str) and r["dataset_fingerprint"] == dataset_fingerprint(small_ds)
    assert r["git_commit"] == git_commit() and isinstance(r["run_id"], str) and len(r["run_id"]) == 12
    w.save()
    saved = json.loads(w.path.read_text())
    assert saved["profile"] == "smoke" and saved["seed_offset"] == 3 and "mmlib_version" in saved
    assert saved["dataset_fingerprint"] == r["dataset_fingerprint"] and saved["created"].endswith("Z")
    df = load_records(tmp_path)
    assert {"profile", "git_commit", "dataset_fingerprint", "seed_offset", "run_id"} <= set(df.columns)
    row = df.iloc[0]
    assert row["profile"] == "smoke" and row["seed_offset"] == 3 and row["dataset_fingerprint"] == r["dataset_fingerprint"]
    # a profile given by name; a record made without a writer (an experiment helper) gets the writer's provenance
    w2 = RecordWriter("20_y", "spacecraft", tmp_path, profile="standard", fingerprint="f" * 20)
    r2 = w2.add(make_record(notebook="20_y", dataset="spacecraft", profile="other", **_rec()))
    assert r2["profile"] == "standard" and r2["seed_offset"] == 0 and r2["dataset_fingerprint"] == "f" * 20


def test_old_records_without_provenance_still_load(tmp_path):
    f = tmp_path / "d" / "10_x.results.json"
    f.parent.mkdir()
    rec = dict(notebook="10_x", dataset="d", **_rec())
    f.write_text(json.dumps({"git_commit": "abc1234", "records": [rec]}))
    (r,) = read_records_file(f)
    assert r["git_commit"] == "abc1234" and r["seed_offset"] == 0 and r["profile"] is None and r["run_id"] is None
    df = load_records(tmp_path)
    assert df["git_commit"].tolist() == ["abc1234"] and df["seed_offset"].tolist() == [0]


def test_run_ids_are_stable_and_unique_within_a_file(tmp_path):
    def ids():
        w = RecordWriter("10_x", "d", tmp_path)
        return [w.add(**kw)["run_id"] for kw in (_rec(), _rec(), _rec(seed=1), _rec(condition="noise=0.5"))]

    a, b = ids(), ids()
    assert a == b and len(set(a)) == 4 and a[1] == f"{a[0]}-2"
    other = RecordWriter("20_y", "d", tmp_path).add(**_rec())["run_id"]
    assert other not in a  # the notebook is part of the id


# --------------------------------------------------------------------------- predictions

def test_predictions_round_trip(tmp_path, small_ds):
    P = get_profile("smoke")
    n_test = len(small_ds.splits["test"])
    w = RecordWriter("10_x", "spacecraft", tmp_path, profile=P, data=small_ds)
    reg = np.linspace(0, 1, n_test)                              # float64 in, float32 out
    r1 = w.add(**_rec(), predictions=reg)
    r2 = w.add(**_rec(seed=1), predictions=np.full((n_test, 3), 1 / 3))  # class probabilities
    r3 = w.add(**_rec(seed=2))                                    # no predictions: nothing stored for it
    r4 = w.add(**_rec(model="binary"), predictions=np.full(5, 0.5), y_test=[0, 1, 1, 0, 1])  # another target
    y_own = small_ds.target[small_ds.splits["test"]]
    r5 = w.add(**_rec(seed=3), predictions=reg, y_test=y_own)    # the writer's own targets: stored once
    with pytest.raises(MMLibError, match="rows but the test split has"):
        w.add(**_rec(seed=9), predictions=np.zeros(n_test + 1))
    with pytest.raises(MMLibError, match="predictions must be"):
        w.add(**_rec(seed=9), predictions=np.zeros((2, 2, 2)))
    w.save()
    npz = tmp_path / "spacecraft" / f"10_x{PREDICTIONS_SUFFIX}"
    assert npz.is_file()
    preds = load_predictions(tmp_path, "spacecraft")
    assert set(preds) == {r1["run_id"], r2["run_id"], r4["run_id"], r5["run_id"]} and r3["run_id"] not in preds
    with np.load(npz) as z:
        assert sorted(k for k in z.files if k.startswith("__y_test__")) == ["__y_test__", f"__y_test__.{r4['run_id']}"]
    assert all(p.dtype == np.float32 for p in preds.values())
    np.testing.assert_allclose(preds[r1["run_id"]], reg.astype(np.float32))
    assert preds[r2["run_id"]].shape == (n_test, 3)
    y = load_test_targets(tmp_path, "spacecraft")
    np.testing.assert_array_equal(y, small_ds.target.numpy()[small_ds.splits["test"]])
    assert y.dtype == np.float32
    assert load_test_targets(tmp_path, "spacecraft", run_id=r4["run_id"]).tolist() == [0, 1, 1, 0, 1]
    np.testing.assert_array_equal(load_test_targets(tmp_path, "spacecraft", run_id=r1["run_id"]), y)
    assert load_predictions(tmp_path, "spacecraft", notebooks=["20"]) == {}
    assert set(load_predictions(tmp_path, "spacecraft", notebooks="10")) == set(preds)
    # a rerun whose records have no predictions leaves no stale file behind
    w2 = RecordWriter("10_x", "spacecraft", tmp_path)
    w2.add(**_rec())
    w2.save()
    assert not npz.exists() and load_predictions(tmp_path, "spacecraft") == {}


def test_a_writer_without_predictions_writes_no_predictions_file(tmp_path):
    w = RecordWriter("10_x", "d", tmp_path)
    w.set_targets(np.arange(4.0))
    w.add(**_rec())
    w.save()
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["10_x.results.json"]
    assert load_test_targets(tmp_path, "d") is None


def test_predictions_of_records_not_published_are_ignored(tmp_path):
    w = RecordWriter("10_x", "d", tmp_path)
    rid = w.add(**_rec(), predictions=np.zeros(3))["run_id"]
    w.save()
    d = tmp_path / "d"
    np.savez(d / f"30_z{PREDICTIONS_SUFFIX}", orphan=np.zeros(3, np.float32))  # no results file beside it
    assert set(load_predictions(tmp_path, "d")) == {rid}


# --------------------------------------------------------------------------- git state

def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                   capture_output=True)


def test_git_state_lists_changed_tracked_files_outside_reports(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "reports").mkdir()
    for name in ("reports/a.json", "a.py", "b.py"):
        (tmp_path / name).write_text("1")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    head, changed = git_state(tmp_path)
    assert head and changed == []
    (tmp_path / "reports" / "a.json").write_text("2")
    (tmp_path / "a.py").write_text("2")
    (tmp_path / "untracked.py").write_text("x")
    _git(tmp_path, "mv", "b.py", "c.py")
    head2, changed = git_state(tmp_path)
    assert head2 == head and sorted(changed) == ["a.py", "c.py"]
    assert git_commit(tmp_path) == f"{head}+dirty"
    assert git_state(tmp_path / "reports" / "nope") == (None, [])


# --------------------------------------------------------------------------- runner: dirty tree, seed offset, publishing

def _notebook(folder: Path, name: str = "10_fake") -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('dataset = "spacecraft"\nprofile = "smoke"\ndevice = "auto"\n'
                                       'seed_offset = 0\nout_dir = "../reports"\nrecords_dir = "../reports"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("pass")]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return path


def _fake_execute(calls: list, with_predictions: bool = True, broken: bool = False):
    """Stands in for papermill: writes what a notebook would, through a RecordWriter."""

    def execute(input_path, output_path, parameters, **kw):
        calls.append(dict(parameters))
        name = Path(input_path).stem
        P = get_profile(parameters["profile"], seed_offset=parameters.get("seed_offset", 0))
        w = RecordWriter(name, parameters["dataset"], parameters["out_dir"], profile=P, fingerprint="f" * 20)
        w.set_targets(np.arange(5.0))
        for seed in P["seeds"]:
            w.add(**_rec(seed=seed), predictions=np.full(5, 0.5) if with_predictions else None)
        w.save()
        if broken:
            w.predictions_path.write_bytes(b"not a zip file")
        nb = nbformat.v4.new_notebook()
        nbformat.write(nb, str(output_path))
        return nb

    return execute


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = runner.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _args(nb_dir: Path, out: Path, *more: str) -> list[str]:
    return ["--profile", "smoke", "--datasets", "spacecraft", "--notebooks-dir", str(nb_dir), "--out-dir", str(out),
            "--no-html", *more]


DIRTY = [f"mmlib/m{i}.py" for i in range(7)]


def test_dirty_tree_is_refused_with_the_files_named(tmp_path, monkeypatch):
    _notebook(tmp_path / "nb")
    monkeypatch.setattr(runner, "git_state", lambda *a, **k: ("abc1234", list(DIRTY)))
    calls: list = []
    monkeypatch.setattr(runner.papermill, "execute_notebook", _fake_execute(calls))
    rc, _, err = _cli(*_args(tmp_path / "nb", tmp_path / "out"))
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "commit first, or pass --allow-dirty" in err and "7 file(s)" in err and "and 2 more" in err
    assert all(f in err for f in DIRTY[:5]) and DIRTY[5] not in err
    assert not calls and not (tmp_path / "out").exists()


def test_allow_dirty_runs_and_marks_the_runs_dirty(tmp_path, monkeypatch):
    _notebook(tmp_path / "nb")
    monkeypatch.setattr(runner, "git_state", lambda *a, **k: ("abc1234", list(DIRTY)))
    calls: list = []
    monkeypatch.setattr(runner.papermill, "execute_notebook", _fake_execute(calls))
    out = tmp_path / "out"
    rc, stdout, err = _cli(*_args(tmp_path / "nb", out, "--allow-dirty", "--seed-offset", "4"))
    assert rc == 0, err
    assert "allow-dirty" in err and "abc1234+dirty" in stdout and "seed offset 4" in stdout
    assert calls[0]["seed_offset"] == 4 and calls[0]["profile"] == "smoke"
    entry = json.loads((out / "runs.json").read_text())["runs"]["spacecraft"]["10_fake"]
    assert entry["dirty"] is True and entry["commit"] == "abc1234+dirty" and entry["seed_offset"] == 4
    index = (out / "index.html").read_text()
    assert '<code class="dirty">abc1234</code> <span class="dirty">(dirty)</span>' in index
    assert "smoke (seed offset 4)" in index
    (rec,) = read_records_file(out / "spacecraft" / "10_fake.results.json")
    assert rec["seed"] == 4 and rec["seed_offset"] == 4 and rec["profile"] == "smoke"


def test_clean_tree_is_not_marked(tmp_path, monkeypatch):
    _notebook(tmp_path / "nb")
    monkeypatch.setattr(runner, "git_state", lambda *a, **k: ("abc1234", []))
    monkeypatch.setattr(runner.papermill, "execute_notebook", _fake_execute([]))
    out = tmp_path / "out"
    rc, _, err = _cli(*_args(tmp_path / "nb", out))
    assert rc == 0, err
    index = (out / "index.html").read_text()
    assert "<code>abc1234</code>" in index and "(dirty)" not in index
    assert json.loads((out / "runs.json").read_text())["runs"]["spacecraft"]["10_fake"]["dirty"] is False


def test_seed_offset_option_is_checked(tmp_path):
    _notebook(tmp_path / "nb")
    rc, _, err = _cli(*_args(tmp_path / "nb", tmp_path / "out", "--seed-offset", "-1"))
    assert rc == 2 and "--seed-offset" in err
    rc, _, err = _cli(*_args(tmp_path / "nb", tmp_path / "out", "-p", "seed_offset=2"))
    assert rc == 2 and "use --seed-offset instead" in err


def test_publishing_moves_the_predictions_with_the_records(tmp_path, monkeypatch):
    _notebook(tmp_path / "nb")
    monkeypatch.setattr(runner, "git_state", lambda *a, **k: ("abc1234", []))
    out = tmp_path / "out"
    ds_dir = out / "spacecraft"
    npz = ds_dir / f"10_fake{PREDICTIONS_SUFFIX}"

    monkeypatch.setattr(runner.papermill, "execute_notebook", _fake_execute([]))
    assert _cli(*_args(tmp_path / "nb", out))[0] == 0
    assert npz.is_file() and not [p for p in ds_dir.iterdir() if p.name.startswith(".")]  # staging is gone
    (rec,) = read_records_file(ds_dir / "10_fake.results.json")
    preds = load_predictions(out, "spacecraft")
    assert list(preds) == [rec["run_id"]] and preds[rec["run_id"]].dtype == np.float32
    assert load_test_targets(out, "spacecraft").tolist() == [0, 1, 2, 3, 4]

    # a broken predictions file fails the run before anything is published
    good = {p.name: p.read_bytes() for p in ds_dir.iterdir()}
    monkeypatch.setattr(runner.papermill, "execute_notebook", _fake_execute([], broken=True))
    rc, _, err = _cli(*_args(tmp_path / "nb", out))
    assert rc == 1 and "left untouched" in err
    assert {p.name: p.read_bytes() for p in ds_dir.iterdir() if p.name in good} == good

    # records republished without predictions: the old predictions file goes
    monkeypatch.setattr(runner.papermill, "execute_notebook", _fake_execute([], with_predictions=False))
    assert _cli(*_args(tmp_path / "nb", out))[0] == 0
    assert not npz.exists() and (ds_dir / "10_fake.results.json").is_file()
    assert load_predictions(out, "spacecraft") == {}
