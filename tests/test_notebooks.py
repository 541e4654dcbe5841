"""Smoke run of every notebook through the same runner the README's report command uses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from mmlib.config import NOTEBOOKS_DIR
from mmlib.data.export import export_spacecraft
from mmlib.reporting.runner import main as run_reports

NOTEBOOKS = sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
DATASETS = os.environ.get("MMLIB_SMOKE_DATASETS", "spacecraft clothing").split()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    code = run_reports(["--profile", "smoke", "--datasets", *DATASETS, "--out-dir", str(out), "--allow-dirty"])
    return code, out


def test_notebooks_exist():
    assert {"00_eda", "10_unimodal_baselines", "20_simple_fusion", "30_ablations", "40_fusion_variants",
            "50_modality_imbalance", "90_postmortem"} <= set(NOTEBOOKS)


def test_source_notebooks_carry_no_outputs():
    for nb in NOTEBOOKS:
        cells = json.loads((NOTEBOOKS_DIR / f"{nb}.ipynb").read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert "parameters" in code[0].get("metadata", {}).get("tags", []), nb
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), nb


def test_every_notebook_runs_on_every_dataset(smoke_run):
    code, out = smoke_run
    assert code == 0
    runs = json.loads((out / "runs.json").read_text())
    assert (out / "index.html").is_file()
    for ds in DATASETS:
        for nb in NOTEBOOKS:
            html = out / ds / f"{nb}.html"
            assert html.is_file() and html.stat().st_size > 10_000, (ds, nb)
        # every notebook but the postmortem writes result records
        for nb in NOTEBOOKS:
            if nb == "90_postmortem":
                continue
            recs = json.loads((out / ds / f"{nb}.results.json").read_text())["records"]
            if not recs:  # allowed only where the notebook says it does not apply (e.g. no image modality)
                assert "Not applicable:" in (out / ds / f"{nb}.html").read_text(), (ds, nb)
        pm = (out / ds / "postmortem.md").read_text()
        assert "Did multimodal fusion meaningfully outperform unimodal models?" in pm
        assert (out / ds / "experiments.md").is_file()
    assert runs


# --------------------------------------------------------------------------- your own data: a spec file

FOLDER_SPEC_ROWS = 300  # a small spacecraft export: CSV + 32x32 PNGs + captions, through the folder loader


@pytest.fixture(scope="module")
def folder_smoke_run(tmp_path_factory):
    """Every notebook on a spacecraft export through ``--data spec.toml``, with one image file
    missing and ``missing_images = "absent"`` (00_eda's validation table shows it)."""
    data = tmp_path_factory.mktemp("own_data")
    spec = export_spacecraft(data, n_rows=FOLDER_SPEC_ROWS, seed=0, name="ships_smoke")
    (data / "spacecraft_images" / "000004.png").unlink()
    spec.write_text(spec.read_text() + 'missing_images = "absent"\n')
    out = tmp_path_factory.mktemp("reports_own")
    t0 = time.perf_counter()
    code = run_reports(["--profile", "smoke", "--data", str(spec), "--out-dir", str(out), "--allow-dirty"])
    return code, out, time.perf_counter() - t0


@pytest.mark.slow
def test_every_notebook_runs_on_a_folder_dataset_from_a_spec(folder_smoke_run):
    code, out, seconds = folder_smoke_run
    print(f"9 notebooks on a {FOLDER_SPEC_ROWS}-row folder export: {seconds:.0f} s")
    assert code == 0  # a notebook with an error cell fails the run
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert list(runs) == ["ships_smoke"] and all(r["status"] == "ok" for r in runs["ships_smoke"].values())
    assert sorted(runs["ships_smoke"]) == NOTEBOOKS
    ds_dir = out / "ships_smoke"
    for nb in NOTEBOOKS:
        assert (ds_dir / f"{nb}.html").stat().st_size > 10_000, nb
        if nb != "90_postmortem":
            recs = json.loads((ds_dir / f"{nb}.results.json").read_text())["records"]
            assert {r["dataset"] for r in recs} <= {"ships_smoke"}, nb
    eda = (ds_dir / "00_eda.html").read_text()
    assert "image file not found (e.g. spacecraft_images/000004.png)" in eda and "the row lacks the image" in eda
    assert "Did multimodal fusion meaningfully outperform unimodal models?" in (ds_dir / "postmortem.md").read_text()


def test_papermill_takes_a_spec_path_and_a_notebook_that_does_not_apply_says_so(tmp_path):
    """``papermill NB out.ipynb -p dataset spec.toml`` (a path relative to the current folder) on a
    tabular + text dataset: 60 needs an image modality, says so and ends without an error."""
    export_spacecraft(tmp_path / "data", n_rows=60, seed=1, name="unused")
    (tmp_path / "two.toml").write_text('name = "ships_two"\nloader = "folder"\ncsv_path = "data/candidates_data.csv"\n'
                                       'target = "target"\ntext_column = "description"\ntext_encoder = "tokens"\n')
    reports = tmp_path / "reports"
    nb = NOTEBOOKS_DIR / "60_contrastive_alignment.ipynb"
    cmd = [sys.executable, "-m", "papermill", str(nb), "out.ipynb", "-p", "dataset", "two.toml", "-p", "out_dir",
           str(reports), "-p", "records_dir", str(reports), "-p", "profile", "smoke", "--no-progress-bar"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = (tmp_path / "out.ipynb").read_text()
    assert "Not applicable:" in executed and '"output_type": "error"' not in executed
    assert json.loads((reports / "ships_two" / "60_contrastive_alignment.results.json").read_text())["records"] == []


def test_papermill_parses_every_declared_parameter():
    """papermill skips (with a warning only) a parameter line it cannot parse, e.g. a comment with
    an `=` in it; the runner would then never pass that parameter."""
    import papermill as pm

    for nb in NOTEBOOKS:
        cells = json.loads((NOTEBOOKS_DIR / f"{nb}.ipynb").read_text())["cells"]
        source = "".join(cells[1]["source"]) if "parameters" in cells[1].get("metadata", {}).get("tags", []) \
            else "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
        declared = [line.split("=")[0].strip() for line in source.splitlines() if line.strip() and not line.startswith("#")]
        assert list(pm.inspect_notebook(str(NOTEBOOKS_DIR / f"{nb}.ipynb"))) == declared, nb
