"""The report runner: execute notebooks × datasets headlessly and publish HTML.

    python -m mmlib.reports --profile standard --datasets spacecraft clothing
    python -m mmlib.reports --profile smoke --notebooks 10 20 -p epochs=3
    python -m mmlib.reports --data my_data/pets.toml     # your own data: a spec file (mmlib.data.spec)
    python -m mmlib.reports --executor ray --workers 4       # the notebooks' training grids on Ray
    python -m mmlib.reports --list

It refuses to run when tracked files outside ``reports/`` differ from the
commit (the reports would match no commit): commit first, or pass
``--allow-dirty``, which runs anyway and marks those runs dirty in the index.
``--seed-offset K`` passes ``seed_offset=K`` to the notebooks (they add K to
every training seed: an independent rerun on the same data). ``--executor``,
``--workers`` and ``--ray-address`` are passed to the notebooks that declare them
(``executor``, ``workers``, ``ray_address``: where their grids of runs train, see
``mmlib.training.executor``; default: the profile's ``executor``). For each dataset
and notebook (``notebooks/NN_*.ipynb``, in order) it

1. reads the notebook's ``parameters`` cell and refuses parameters it does not
   declare (papermill would only warn and run with the defaults);
2. runs it with papermill into a staging folder
   ``<out_dir>/<dataset>/.staging-<notebook>/``, passed to the notebook as its
   ``out_dir`` (a reports *root*: the notebook writes ``<out_dir>/<dataset>/...``,
   e.g. through ``mmlib.reporting.records.RecordWriter``); ``records_dir`` is the real
   reports folder, for notebooks that read what earlier notebooks published;
3. on success renders the executed notebook to ``<out_dir>/<dataset>/<notebook>.html``
   and moves everything the notebook wrote into ``<out_dir>/<dataset>/`` (each
   file by an atomic rename; the records' ``.predictions.npz`` with them, and a
   published one the new records no longer have is removed), then rewrites
   ``experiments.md`` from the records;
4. on failure leaves the published files as they were, names the notebook, the
   cell and the exception, and stops (exit code 1);
5. after every notebook updates ``<out_dir>/runs.json`` (status, runtime,
   device, commit, profile, date per dataset × notebook) and ``<out_dir>/index.html``.

A lock file keeps two runs from writing into the same folder at once.
The parts live beside this module: ``notebooks`` (discovery, parameters), ``lock``
(``RunLock``), ``index`` (runs.json, index.html, experiments.md).
Exit codes: 0 ok, 1 a notebook failed, 2 bad usage (one ``error: …`` line), 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import nbformat
import numpy as np
import papermill
from papermill.exceptions import PapermillExecutionError

from mmlib.config import NOTEBOOKS_DIR, REPORTS_DIR
from mmlib.training.profiles import get_profile, profile_names
from mmlib.reporting.index import (EXPERIMENTS_NAME, INDEX_NAME, fmt_duration, load_runs, save_runs, write_experiments,
                                   write_index)
from mmlib.reporting.lock import RunLock, _warn
from mmlib.reporting.notebooks import (KERNEL_NAME, check_extras, discover_notebooks, find_first_tagged_cell_index,
                                       notebook_inputs, notebook_parameters, parse_params, select_notebooks)
from mmlib.reporting.records import PREDICTIONS_SUFFIX, RESULTS_SUFFIX, git_state, read_records_file, utc_now
from mmlib.utils import MMLibError, atomic_write_text

DEFAULT_DATASETS: tuple[str, ...] = ("spacecraft", "clothing")
STAGING_PREFIX = ".staging-"
EXECUTED_NAME = ".executed.ipynb"   # the executed copy, inside the staging folder; never published
KERNEL_LOG_NAME = ".kernel-stderr.log"  # the kernel process's own stderr (startup warnings, crashes)
_RUNNER_FILES = (EXECUTED_NAME, KERNEL_LOG_NAME)
# Environment of the notebook kernels. The inline backend is forced so that an
# MPLBACKEND=Agg in the caller's shell cannot silently drop every figure from the
# reports; tqdm bars render as widget junk in HTML, so they are off unless the
# caller sets TQDM_DISABLE itself.
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONHASHSEED": "0",
              "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
KERNEL_ENV_DEFAULTS = {"TQDM_DISABLE": "1"}


def _say(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- executing one notebook

@dataclass
class NotebookResult:
    dataset: str
    notebook: str
    status: str                 # "ok" | "failed"
    runtime_s: float
    device: str | None
    error: str | None = None    # one line, for runs.json / index
    message: str | None = None  # several lines, for the terminal
    interrupted: bool = False


@contextlib.contextmanager
def kernel_environment() -> Iterator[None]:
    """Environment variables for the kernels papermill starts (they inherit ours)."""
    keys = (*KERNEL_ENV, *KERNEL_ENV_DEFAULTS)
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(KERNEL_ENV)
    for k, v in KERNEL_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def kernel_stderr_to(path: Path) -> Iterator[None]:
    """Send the stderr of child processes (the kernel: its startup warnings and
    shutdown chatter) to ``path`` while this process keeps writing to the
    terminal: file descriptor 2 is pointed at the log and ``sys.stderr`` at a
    duplicate of the original descriptor."""
    try:
        sys.stderr.flush()
        saved_fd = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: leave things as they are
        yield
        return
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_stderr = sys.stderr
    term = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(log_fd, 2)
    sys.stderr = term
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            term.flush()
        sys.stderr = saved_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        os.close(log_fd)
        term.close()


def _source_cell(nb_path: Path, cell_index: int, injected: bool) -> tuple[int | None, str]:
    """Map a cell index of the executed notebook back to the source notebook
    (papermill inserts its injected-parameters cell after the ``parameters`` cell)."""
    try:
        src = nbformat.read(str(nb_path), as_version=4)
    except Exception:
        return cell_index, f"cell {cell_index} of the executed notebook"
    if injected and find_first_tagged_cell_index(src, "injected-parameters") < 0:
        p = find_first_tagged_cell_index(src, "parameters")
        pos = p + 1 if p >= 0 else 0
        if cell_index == pos:
            return None, "the injected-parameters cell (a parameter value is not valid Python?)"
        if cell_index > pos:
            cell_index -= 1
    return cell_index, f"cell {cell_index}"


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe_failure(exc: BaseException, nb_path: Path, injected: bool) -> tuple[str, list[str]]:
    """(one-line error, extra lines for the terminal)."""
    if isinstance(exc, PapermillExecutionError):
        _, where = _source_cell(nb_path, exc.cell_index, injected)
        what = f"{exc.ename}: {_first_line(exc.evalue)}" if exc.evalue else exc.ename
        count = f", In [{exc.exec_count}]" if exc.exec_count is not None else ""
        error = f"{where} (counting from 0{count}) raised {what}"
        lines = []
        src = _first_line(exc.source, 160)
        if src:
            lines.append(f"cell starts with: {src}")
        return error, lines
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)", []
    return f"{type(exc).__name__}: {_first_line(str(exc)) or repr(exc)}", []


def _staged_files(staging: Path, dataset: str, ds_dir: Path) -> list[tuple[Path, Path]]:
    """(source, destination) for every file the notebook wrote under its
    ``out_dir``: ``<staging>/<dataset>/x`` (the normal case) and ``<staging>/x``
    both land at ``<out_dir>/<dataset>/x``."""
    moves = []
    for src in sorted(staging.rglob("*")):
        if not src.is_file() or (src.name in _RUNNER_FILES and src.parent == staging):
            continue
        rel = src.relative_to(staging)
        if len(rel.parts) > 1 and rel.parts[0] == dataset:
            rel = Path(*rel.parts[1:])
        moves.append((src, ds_dir / rel))
    return moves


def _render_html(nb: nbformat.NotebookNode, title: str, provenance: str) -> str:
    from nbconvert import HTMLExporter  # slow import; only when rendering

    nb = copy.deepcopy(nb)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(provenance))
    exporter = HTMLExporter(embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def run_notebook(nb_path: Path, dataset: str, declared: dict[str, Any], extras: dict[str, Any], *,
                 profile: str, device: str, out_dir: Path, notebooks_dir: Path, commit: str | None,
                 html_output: bool = True, default_device: str | None = None, seed_offset: int = 0,
                 dataset_arg: str | None = None, scale_out: dict[str, Any] | None = None) -> NotebookResult:
    """Execute one notebook for one dataset and publish its outputs (see the module doc).
    ``dataset`` names the reports folder; ``dataset_arg`` (default: ``dataset``) is what the
    notebook's ``dataset`` parameter receives, e.g. the path of a spec file."""
    name = nb_path.stem
    ds_dir = out_dir / dataset
    staging = ds_dir / f"{STAGING_PREFIX}{name}"
    executed = staging / EXECUTED_NAME
    kernel_log = staging / KERNEL_LOG_NAME
    if staging.exists():
        shutil.rmtree(staging)  # leftover of an earlier failed run
    staging.mkdir(parents=True)
    standard = {"dataset": dataset_arg or dataset, "profile": profile, "device": device,
                "out_dir": str(staging), "records_dir": str(out_dir), "seed_offset": seed_offset,
                **(scale_out or {})}  # executor / workers / ray_address, to the notebooks that declare them
    params = notebook_inputs(declared, standard, extras)
    t0 = time.perf_counter()
    try:
        with kernel_environment(), kernel_stderr_to(kernel_log):
            nb = papermill.execute_notebook(
                str(nb_path), str(executed), parameters=params, kernel_name=KERNEL_NAME,
                cwd=str(notebooks_dir), log_output=False, progress_bar=sys.stderr.isatty())
        runtime = time.perf_counter() - t0
        moves = _staged_files(staging, dataset, ds_dir)
        # Check the records before publishing anything: a bad file must not replace a good one.
        run_device = None
        for src, dst in moves:
            if dst == ds_dir / f"{name}{RESULTS_SUFFIX}":
                devices = Counter(r["device"] for r in read_records_file(src) if r["device"])
                run_device = devices.most_common(1)[0][0] if devices else None
            elif dst.name.endswith(PREDICTIONS_SUFFIX):
                with np.load(src) as z:  # a broken file fails the run here, before anything is published
                    [z[k] for k in z.files]
        # records published without predictions: a predictions file left from an earlier run is stale
        stale = [ds_dir / f"{name}{PREDICTIONS_SUFFIX}"] if (
            any(dst.name == f"{name}{RESULTS_SUFFIX}" for _, dst in moves)
            and not any(dst.name == f"{name}{PREDICTIONS_SUFFIX}" for _, dst in moves)) else []
        run_device = run_device or default_device or device
        if html_output:
            offset = f" (seed offset {seed_offset})" if seed_offset else ""
            prov = (f"*Rendered by `python -m mmlib.reports` on {utc_now()}: dataset **{dataset}**, "
                    f"profile **{profile}**{offset}, device `{run_device}`, commit `{commit or 'unknown'}`, "
                    f"runtime {fmt_duration(runtime)}.*")
            html_tmp = staging / f".{name}.html"
            atomic_write_text(html_tmp, _render_html(nb, f"{dataset} · {name}", prov))
            moves.append((html_tmp, ds_dir / f"{name}.html"))  # last: its presence means the rest is in place
        for src, dst in moves:  # sorted: <name>.predictions.npz lands before <name>.results.json
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        for path in stale:
            path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        return NotebookResult(dataset, name, "ok", runtime, run_device)
    except (Exception, KeyboardInterrupt) as exc:
        runtime = time.perf_counter() - t0
        error, lines = _describe_failure(exc, nb_path, injected=bool(params))
        msg = [f"FAILED: {dataset} / {name}: {error}", *(f"    {ln}" for ln in lines)]
        if executed.exists():
            msg.append(f"    executed notebook (for inspection): {executed}")
        if kernel_log.exists() and kernel_log.stat().st_size:
            msg.append(f"    kernel stderr log: {kernel_log}")
        msg.append(f"    the previously published report and records in {ds_dir} were left untouched.")
        return NotebookResult(dataset, name, "failed", runtime, default_device or device, error=error,
                              message="\n".join(msg), interrupted=isinstance(exc, KeyboardInterrupt))


# --------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m mmlib.reports",
        description="Execute the numbered notebooks for each dataset with papermill and render HTML reports.")
    ap.add_argument("--profile", choices=profile_names(), default="standard",
                    help="run size (see mmlib.training.profiles): smoke for tests, standard for the committed reports, "
                         "full for a GPU (default: %(default)s)")
    ap.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                    help=f"registered datasets to run (default: {' '.join(DEFAULT_DATASETS)}, or none when --data "
                         "is given)")
    ap.add_argument("--data", nargs="+", default=[], metavar="SPEC",
                    help="dataset spec files (.toml, see mmlib.data.spec; or an embeddings .npz) to run, each into "
                         "<out-dir>/<its name>/")
    ap.add_argument("--notebooks", nargs="+", default=None, metavar="NN",
                    help="notebook name prefixes, e.g. 00 10 (default: all, in order)")
    ap.add_argument("--out-dir", type=Path, default=REPORTS_DIR, help="reports folder (default: %(default)s)")
    ap.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR,
                    help="folder of NN_*.ipynb notebooks (default: %(default)s)")
    ap.add_argument("--device", default="auto", help="device passed to the notebooks: auto, cpu, cuda, mps")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra notebook parameter (repeatable); VALUE is a Python literal or a string; "
                         "every selected notebook must declare KEY")
    ap.add_argument("--seed-offset", type=int, default=0, metavar="K",
                    help="add K to every seed the notebooks use: an independent rerun on the same data and splits "
                         "(default: %(default)s)")
    ap.add_argument("--executor", choices=("local", "ray"), default=None,
                    help="where the notebooks' grids of runs train: local (one after the other) or ray "
                         "(default: the profile's executor)")
    ap.add_argument("--workers", type=int, default=0, metavar="N",
                    help="runs at once on a local Ray instance (default: 0 = one per CPU)")
    ap.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                    help="a Ray cluster to train on (default: $MMLIB_RAY_ADDRESS; none = a local Ray instance)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="run even though tracked files outside reports/ differ from the commit; "
                         "the runs are marked dirty in the index")
    ap.add_argument("--no-html", action="store_true", help="skip the nbconvert HTML rendering")
    ap.add_argument("--list", action="store_true", help="list the notebooks and their parameters, run nothing")
    return ap


def _list(notebooks: Sequence[Path]) -> None:
    for nb in notebooks:
        params = notebook_parameters(nb)
        _say(nb.stem)
        if not params:
            _say("    (no cell tagged 'parameters')")
        width = max((len(f"{p['name']} = {p['default']}") for p in params.values()), default=0)
        for p in params.values():
            left = f"{p['name']} = {p['default']}"
            _say(f"    {left:<{width}}  # {p['help']}" if p["help"] else f"    {left}")


def _check_datasets(datasets: Sequence[str], specs: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(reports folder name, the notebooks' ``dataset`` parameter) per dataset: registered names,
    and spec files (from ``--data``, or a path in ``--datasets``) checked here, before any run."""
    from mmlib.data import available_datasets, read_spec, required_parameters
    from mmlib.data.spec import is_spec_path

    known = available_datasets()
    paths = [*[d for d in datasets if is_spec_path(d)], *specs]
    names = [d for d in datasets if not is_spec_path(d)]
    unknown = [d for d in names if d not in known]
    if unknown:
        raise MMLibError(f"unknown dataset(s) {', '.join(unknown)}. Available: {', '.join(known)}; your own data: "
                         f"--data path/to/spec.toml.")
    # a loader that needs arguments (your own files: folder, embeddings) gets them from a spec file
    needs = {d: required_parameters(d) for d in names}
    needs = {d: r for d, r in needs.items() if r}
    if needs:
        what = "; ".join(f"{d!r} needs {', '.join(r)}" for d, r in needs.items())
        raise MMLibError(f"dataset(s) {', '.join(needs)} need arguments ({what}): write them in a spec file "
                         f"(name = \"mine\", loader = \"{next(iter(needs))}\", ...; see mmlib.data.spec) and pass "
                         f"--data path/to/spec.toml.")
    out = [(d, d) for d in names]
    for p in paths:
        spec = read_spec(p)
        out.append((spec.name, str(spec.path)))
    seen = Counter(name for name, _ in out)
    twice = [n for n, c in seen.items() if c > 1]
    if twice:
        raise MMLibError(f"two datasets would write to the same reports folder: {', '.join(twice)} (give the spec "
                         f"files different names).")
    return out


def _resolved_device(device: str) -> str:
    if device != "auto":
        return device
    from mmlib.utils import resolve_device
    return resolve_device("auto").type


def run(args: argparse.Namespace) -> int:
    notebooks_dir = args.notebooks_dir.resolve()
    out_dir = args.out_dir.resolve()
    notebooks = select_notebooks(discover_notebooks(notebooks_dir), args.notebooks)
    if args.list:
        _list(notebooks)
        return 0
    if args.seed_offset < 0:
        raise MMLibError(f"--seed-offset must be a non-negative integer, got {args.seed_offset}.")
    get_profile(args.profile, seed_offset=args.seed_offset)
    asked = args.datasets if args.datasets is not None else ([] if args.data else list(DEFAULT_DATASETS))
    targets = _check_datasets(list(dict.fromkeys(asked)), list(dict.fromkeys(args.data)))
    datasets = [name for name, _ in targets]
    dataset_args = dict(targets)
    extras = parse_params(args.param)
    if args.workers < 0:
        raise MMLibError(f"--workers must be a non-negative integer (0 = one per CPU), got {args.workers}.")
    scale_out = {"executor": args.executor or "", "workers": args.workers,
                 "ray_address": args.ray_address or os.environ.get("MMLIB_RAY_ADDRESS", "")}
    # Check every notebook before running any: a typo should cost seconds, not a 15-minute run.
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    problems = []
    for nb in notebooks:
        try:
            check_extras(nb.stem, declared[nb], extras)
        except MMLibError as exc:
            problems.append(str(exc))
    if problems:
        raise MMLibError(" ".join(problems) + " (papermill would only warn and run with the defaults.)")
    head, changed = git_state()
    if changed and not args.allow_dirty:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise MMLibError(f"the git tree has uncommitted changes outside reports/ ({len(changed)} file(s): {shown}), "
                         f"so the reports would match no commit: commit first, or pass --allow-dirty "
                         f"(the runs are then marked dirty in the index).")
    if changed:
        _warn(f"--allow-dirty: running on uncommitted changes to {len(changed)} file(s); the runs are marked dirty.")
    if args.seed_offset:
        missing = [nb.stem for nb in notebooks if "seed_offset" not in declared[nb]]
        if missing:
            _warn(f"--seed-offset {args.seed_offset}: {', '.join(missing)} declare(s) no seed_offset parameter "
                  f"and run(s) with the profile's own seeds.")
    commit = None if head is None else head + ("+dirty" if changed else "")

    with RunLock(out_dir):
        default_device = _resolved_device(args.device)
        runs = load_runs(out_dir)
        total = len(datasets) * len(notebooks)
        offset = f" (seed offset {args.seed_offset})" if args.seed_offset else ""
        _say(f"mmlib reports: {len(notebooks)} notebook(s) x {len(datasets)} dataset(s), profile {args.profile}"
             f"{offset}, device {args.device}, commit {commit or 'unknown'} -> {out_dir}")
        t_all = time.perf_counter()
        i = 0
        for dataset in datasets:
            for nb in notebooks:
                i += 1
                tag = f"[{i}/{total}] {dataset} {nb.stem}"
                _say(f"{tag} …")
                res = run_notebook(nb, dataset, declared[nb], extras, profile=args.profile, device=args.device,
                                   out_dir=out_dir, notebooks_dir=notebooks_dir, commit=commit,
                                   html_output=not args.no_html, default_device=default_device,
                                   seed_offset=args.seed_offset, dataset_arg=dataset_args[dataset],
                                   scale_out=scale_out)
                runs["runs"].setdefault(dataset, {})[nb.stem] = {
                    "status": res.status, "runtime_s": round(res.runtime_s, 2), "device": res.device,
                    "commit": commit, "dirty": bool(changed), "profile": args.profile,
                    "seed_offset": args.seed_offset, "date": utc_now(), "error": res.error}
                save_runs(out_dir, runs)
                write_index(out_dir, runs)
                if res.status != "ok":
                    _say(f"{tag} … FAILED after {fmt_duration(res.runtime_s)}")
                    print(res.message, file=sys.stderr, flush=True)
                    print(f"Stopped. Index: {out_dir / INDEX_NAME}", file=sys.stderr, flush=True)
                    return 130 if res.interrupted else 1
                try:
                    write_experiments(out_dir, dataset)
                except MMLibError as exc:
                    _warn(f"could not regenerate {dataset}/{EXPERIMENTS_NAME}: {exc}")
                _say(f"{tag} … ok in {fmt_duration(res.runtime_s)}")
        _say(f"done: {total} notebook run(s) in {fmt_duration(time.perf_counter() - t_all)}. "
             f"Index: {out_dir / INDEX_NAME}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except MMLibError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
