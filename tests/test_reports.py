"""The report runner, profiles and result records.

The runner tests execute two small fixture notebooks (tests/fixtures/notebooks):
``00_alpha`` writes two seeds of records and a side file, ``10_beta`` writes one
record and raises in cell 3 when run with ``-p fail=True``. Three kernel starts
in all (the module fixture runs both, the failure test reruns one)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest

from mmlib.training.profiles import PROFILE_KEYS, PROFILES, PROVENANCE_KEYS, get_profile
from mmlib.reporting.lock import LOCK_NAME, RunLock, _pid_alive
from mmlib.reporting.markdown import experiments_markdown
from mmlib.reporting.notebooks import parse_param
from mmlib.reporting.records import (RecordWriter, fmt_mean_std, load_records, make_record, read_records_file,
                                     summarize)
from mmlib.reporting.runner import main
from mmlib.utils import MMLibError

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
DEAD_PID = 99_999_999  # above any pid_max: never a live process


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def base_args(out_dir: Path) -> list[str]:
    # --allow-dirty: these tests run inside a checkout that may have uncommitted changes
    # (the refusal itself is tested in test_provenance.py)
    return ["--profile", "smoke", "--datasets", "spacecraft", "--notebooks-dir", str(FIXTURES),
            "--out-dir", str(out_dir), "--allow-dirty"]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """One good run of both fixture notebooks, started over a stale lock."""
    out = tmp_path_factory.mktemp("reports")
    assert not _pid_alive(DEAD_PID)
    (out / LOCK_NAME).write_text(json.dumps({"pid": DEAD_PID, "host": socket.gethostname(),
                                             "started": "2000-01-01T00:00:00Z"}))
    rc, stdout, stderr = run_cli(*base_args(out))
    return out, rc, stdout, stderr


# --------------------------------------------------------------------------- runner, end to end

def test_run_publishes_reports_records_and_index(published):
    out, rc, stdout, stderr = published
    assert rc == 0, stderr
    ds = out / "spacecraft"
    for name in ("00_alpha.html", "00_alpha.results.json", "10_beta.html", "10_beta.results.json",
                 "alpha_note.md", "experiments.md"):
        assert (ds / name).is_file(), name
    assert (out / "index.html").is_file() and (out / "runs.json").is_file()
    # staging is gone, the lock was taken over (with a warning) and released
    assert not [p for p in ds.iterdir() if p.name.startswith(".")]
    assert "stale lock" in stderr and not (out / LOCK_NAME).exists()
    assert "[1/2] spacecraft 00_alpha … ok in" in stdout and "[2/2] spacecraft 10_beta … ok in" in stdout

    runs = json.loads((out / "runs.json").read_text())["runs"]["spacecraft"]
    assert {e["status"] for e in runs.values()} == {"ok"}
    assert runs["00_alpha"]["device"] == "cpu" and runs["00_alpha"]["profile"] == "smoke"
    assert runs["00_alpha"]["runtime_s"] > 0

    html = (ds / "00_alpha.html").read_text()
    assert "records: 2" in html and "Rendered by" in html and "<html" in html
    index = (out / "index.html").read_text()
    assert 'href="spacecraft/00_alpha.html"' in index and 'href="spacecraft/10_beta.html"' in index
    # the notebook got the profile and the staging out_dir; the side file was moved out of staging
    assert (ds / "alpha_note.md").read_text() == "alpha ran on spacecraft\n"

    log = (ds / "experiments.md").read_text()
    assert "## 00_alpha" in log and "## 10_beta" in log
    assert "0.505 ± 0.007" in log          # test_r2 over seeds 0 and 1
    assert "noise=0.5" in log and "tabular+text" in log

    df = load_records(out, dataset="spacecraft")
    assert len(df) == 3 and set(df["notebook"]) == {"00_alpha", "10_beta"}
    assert (df.loc[df.notebook == "00_alpha", "epochs"] == get_profile("smoke")["epochs"]).all()


def test_failing_notebook_keeps_previous_report(published, tmp_path):
    src, rc, _, _ = published
    assert rc == 0
    out = tmp_path / "reports"
    shutil.copytree(src, out)
    ds = out / "spacecraft"
    before = {n: (ds / n).read_bytes() for n in ("10_beta.html", "10_beta.results.json", "experiments.md")}

    rc, stdout, stderr = run_cli(*base_args(out), "--notebooks", "10", "-p", "fail=True")
    assert rc == 1
    assert "10_beta" in stderr and "cell 3" in stderr and "ValueError: planted failure in cell 3" in stderr
    assert "FAILED" in stdout
    for name, data in before.items():
        assert (ds / name).read_bytes() == data, f"{name} changed after a failed run"
    runs = json.loads((out / "runs.json").read_text())["runs"]["spacecraft"]
    assert runs["10_beta"]["status"] == "failed" and "cell 3" in runs["10_beta"]["error"]
    assert runs["00_alpha"]["status"] == "ok"   # a subset run touches only its own entries
    index = (out / "index.html").read_text()
    assert "failed" in index and "planted failure" in index
    assert not (out / LOCK_NAME).exists()


def test_unknown_parameter_is_refused(tmp_path):
    rc, _, err = run_cli(*base_args(tmp_path), "-p", "bogus_knob=3")
    assert rc == 2
    assert err.startswith("error: ") and "bogus_knob" in err and "00_alpha" in err and "scale" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_parameter_declared_by_one_notebook_only_is_refused_for_the_other(tmp_path):
    rc, _, err = run_cli(*base_args(tmp_path), "-p", "fail=True")
    assert rc == 2 and "notebook 00_alpha: unknown parameter(s) fail." in err and "notebook 10_beta" not in err


def test_runner_owned_parameter_points_to_option(tmp_path):
    rc, _, err = run_cli(*base_args(tmp_path), "-p", "dataset=clothing")
    assert rc == 2 and "--datasets" in err


def test_unknown_profile_refused(tmp_path):
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["--profile", "huge", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "huge" in err.getvalue()
    with pytest.raises(MMLibError, match="smoke, standard, full"):
        get_profile("huge")


def test_unknown_notebook_prefix_and_dataset(tmp_path):
    rc, _, err = run_cli(*base_args(tmp_path), "--notebooks", "77")
    assert rc == 2 and "77" in err and "00_alpha" in err
    rc, _, err = run_cli("--profile", "smoke", "--datasets", "nosuchdata", "--notebooks-dir", str(FIXTURES),
                         "--out-dir", str(tmp_path))
    assert rc == 2 and "nosuchdata" in err


def test_list_prints_parameters():
    rc, out, _ = run_cli("--list", "--notebooks-dir", str(FIXTURES))
    assert rc == 0
    assert "00_alpha" in out and "scale = 1.0" in out and "multiplies the fake metric" in out and "fail = False" in out


def test_live_lock_refuses_second_run(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2025-01-01T00:00:00Z"}))
    before = lock.read_bytes()
    rc, _, err = run_cli(*base_args(tmp_path))
    assert rc == 2
    assert f"another run (pid {os.getpid()}" in err and "started 2025-01-01T00:00:00Z" in err
    assert "remove the lock file" in err
    assert lock.read_bytes() == before  # not ours: left alone


def test_stale_lock_is_taken_over_and_released(tmp_path, capsys):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": DEAD_PID, "host": socket.gethostname(), "started": "x"}))
    with RunLock(tmp_path):
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(MMLibError, match="another run"):
            RunLock(tmp_path).acquire()  # our own live lock stops a second taker
    assert not lock.exists()
    assert "stale lock" in capsys.readouterr().err


def test_parse_param_literals():
    assert parse_param("epochs=5") == ("epochs", 5)
    assert parse_param("lr=1e-3") == ("lr", 0.001)
    assert parse_param("seeds=[0, 1]") == ("seeds", [0, 1])
    assert parse_param("x=None") == ("x", None)
    assert parse_param("name=gru") == ("name", "gru")
    assert parse_param("path=/tmp/a b") == ("path", "/tmp/a b")
    with pytest.raises(MMLibError, match="KEY=VALUE"):
        parse_param("novalue")


# --------------------------------------------------------------------------- profiles

def test_profiles_share_keys_and_copy():
    assert set(PROFILES) == {"smoke", "standard", "full"}
    for name in PROFILES:
        assert set(get_profile(name)) == set(PROFILE_KEYS) | set(PROVENANCE_KEYS)
        assert get_profile(name)["name"] == name and get_profile(name)["seed_offset"] == 0
    assert get_profile("standard")["seeds"] == [0, 1, 2] and len(get_profile("full")["noise_levels"]) == 9
    p = get_profile("smoke")
    p["seeds"].append(99)
    assert get_profile("smoke")["seeds"] == [0]
    assert get_profile("smoke", epochs=5)["epochs"] == 5
    with pytest.raises(MMLibError, match="epoch"):
        get_profile("smoke", epoch=5)


# --------------------------------------------------------------------------- records

def _rec(**kw):
    base = dict(notebook="10_x", experiment="e", dataset="d", model="mlp", modalities=["text", "tabular"],
                seed=0, metrics={"test_r2": 0.5})
    base.update(kw)
    return base


def test_make_record_validates():
    r = make_record(**_rec())
    assert r["modalities"] == ["tabular", "text"] and r["fusion"] == "none" and r["condition"] == ""
    assert make_record(**_rec(modalities="text+image"))["modalities"] == ["image", "text"]
    with pytest.raises(MMLibError, match="missing required field.*seed"):
        make_record(**{k: v for k, v in _rec().items() if k != "seed"})
    with pytest.raises(MMLibError, match="unknown record field.*colour"):
        make_record(**_rec(colour="red"))
    with pytest.raises(MMLibError, match="metric 'acc' must be a number"):
        make_record(**_rec(metrics={"acc": "high"}))
    with pytest.raises(MMLibError, match="condition"):
        make_record(**_rec(condition=0.5))


def test_writer_roundtrip_and_summaries(tmp_path):
    w = RecordWriter("10_x", "d", tmp_path)
    for seed, v in enumerate([0.80, 0.81, 0.82]):
        w.add(_rec(seed=seed, metrics={"test_r2": v, "val_rmse": None}, n_params=10, train_time_s=1.0, device="cpu"))
    w.add(experiment="e", model="gru", modalities=["text"], seed=0, metrics={"test_r2": 0.3})
    with pytest.raises(MMLibError, match="dataset"):
        w.add(_rec(dataset="other"))
    path = w.save()
    assert path == tmp_path / "d" / "10_x.results.json"
    saved = json.loads(path.read_text())
    assert saved["notebook"] == "10_x" and saved["n_records"] == 4 and "mmlib_version" in saved
    assert saved["records"][0]["metrics"]["val_rmse"] is None  # strict JSON, no NaN token
    assert len(read_records_file(path)) == 4

    df = load_records(tmp_path)
    assert {"metric_test_r2", "metric_val_rmse", "modality_set"} <= set(df.columns)
    assert df["modality_set"].iloc[0] == "tabular+text" and math.isnan(df["metric_val_rmse"].iloc[0])
    assert len(load_records(tmp_path, dataset="d", notebook="nope")) == 0
    assert list(load_records(tmp_path / "empty").columns)[:3] == ["notebook", "experiment", "dataset"]

    s = summarize(df, by=["model"], metric="test_r2")
    mlp = s[s.model == "mlp"].iloc[0]
    assert mlp["n"] == 3 and mlp["mean"] == pytest.approx(0.81) and mlp["std"] == pytest.approx(0.01)
    assert s[s.model == "gru"].iloc[0]["n"] == 1
    with pytest.raises(MMLibError, match="Available metrics"):
        summarize(df, by="model", metric="accuracy")

    md = experiments_markdown(df, "d")
    assert "## 10_x" in md and "0.810 ± 0.010" in md and "| gru |" in md
    assert "No result records" in experiments_markdown(df, "other")


def test_bad_records_file_names_it(tmp_path):
    bad = tmp_path / "d" / "10_x.results.json"
    bad.parent.mkdir()
    bad.write_text('{"records": [{"notebook": "10_x"}]}')
    with pytest.raises(MMLibError, match=r"10_x.results.json: record 0: .*missing"):
        load_records(tmp_path)


def test_fmt_mean_std():
    assert fmt_mean_std(0.81234, 0.00412, 3) == "0.812 ± 0.004 (n=3)"
    assert fmt_mean_std(0.8, float("nan"), 1) == "0.800 (n=1)"
    assert fmt_mean_std(12.345, 1.2, None, digits=1) == "12.3 ± 1.2"
    assert fmt_mean_std(float("nan"), 0.1, 3) == "n/a"


def test_git_commit_ignores_the_reports_a_run_rewrites(tmp_path):
    import subprocess

    from mmlib.reporting.records import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "a.json").write_text("1")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "reports" / "a.json").write_text("2")
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path) == clean + "+dirty"
