"""The report runner: execute notebooks × datasets headlessly and publish HTML.

    python -m mmlib.reports --profile standard --datasets spacecraft clothing
    python -m mmlib.reports --profile smoke --notebooks 10 20 -p epochs=3
    python -m mmlib.reports --list

For each dataset and notebook (``notebooks/NN_*.ipynb``, in order) it

1. reads the notebook's ``parameters`` cell and refuses parameters it does not
   declare (papermill would only warn and run with the defaults);
2. runs it with papermill into a staging folder
   ``<out_dir>/<dataset>/.staging-<notebook>/``, passed to the notebook as its
   ``out_dir`` (a reports *root*: the notebook writes ``<out_dir>/<dataset>/...``,
   e.g. through ``mmlib.reporting.records.RecordWriter``); ``records_dir`` is the real
   reports folder, for notebooks that read what earlier notebooks published;
3. on success renders the executed notebook to ``<out_dir>/<dataset>/<notebook>.html``
   and moves everything the notebook wrote into ``<out_dir>/<dataset>/`` (each
   file by an atomic rename), then rewrites ``experiments.md`` from the records;
4. on failure leaves the published files as they were, names the notebook, the
   cell and the exception, and stops (exit code 1);
5. after every notebook updates ``<out_dir>/runs.json`` (status, runtime,
   device, commit, profile, date per dataset × notebook) and ``<out_dir>/index.html``.

A lock file keeps two runs from writing into the same folder at once.
Exit codes: 0 ok, 1 a notebook failed, 2 bad usage (one ``error: …`` line), 130 interrupted.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import html
import json
import os
import shutil
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import nbformat
import papermill
from papermill.exceptions import PapermillExecutionError
from papermill.translators import papermill_translators

from mmlib.config import NOTEBOOKS_DIR, REPORTS_DIR
from mmlib.training.profiles import get_profile, profile_names
from mmlib.reporting.records import (RESULTS_SUFFIX, experiments_markdown, git_commit, load_records, read_records_file,
                           utc_now)
from mmlib.utils import MMLibError, atomic_write_json, atomic_write_text

# Parameters the runner passes to every notebook that declares them.
STANDARD_PARAMS: tuple[str, ...] = ("dataset", "profile", "device", "out_dir", "records_dir")
_STANDARD_OPTION = {"dataset": "--datasets", "profile": "--profile", "device": "--device",
                    "out_dir": "--out-dir", "records_dir": "--out-dir"}
DEFAULT_DATASETS: tuple[str, ...] = ("spacecraft", "clothing")
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
LOCK_NAME = ".mmlib-run.lock"
RUNS_NAME = "runs.json"
INDEX_NAME = "index.html"
EXPERIMENTS_NAME = "experiments.md"
STAGING_PREFIX = ".staging-"
EXECUTED_NAME = ".executed.ipynb"   # the executed copy, inside the staging folder; never published
KERNEL_LOG_NAME = ".kernel-stderr.log"  # the kernel process's own stderr (startup warnings, crashes)
_RUNNER_FILES = (EXECUTED_NAME, KERNEL_LOG_NAME)
KERNEL_NAME = "python3"
# Environment of the notebook kernels. The inline backend is forced so that an
# MPLBACKEND=Agg in the caller's shell cannot silently drop every figure from the
# reports; tqdm bars render as widget junk in HTML, so they are off unless the
# caller sets TQDM_DISABLE itself.
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONHASHSEED": "0",
              "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
KERNEL_ENV_DEFAULTS = {"TQDM_DISABLE": "1"}


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def fmt_duration(seconds: float | None) -> str:
    """``12.3 s``, ``4 min 05 s``, ``1 h 02 min``."""
    if seconds is None:
        return ""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


# --------------------------------------------------------------------------- notebooks and parameters

def find_first_tagged_cell_index(nb: nbformat.NotebookNode, tag: str) -> int:
    """Index of the first cell carrying ``tag``, -1 if none (papermill's helper
    assumes every cell has a ``tags`` list, which nbformat.read does not give)."""
    for i, cell in enumerate(nb.cells):
        if tag in cell.get("metadata", {}).get("tags", []):
            return i
    return -1


def discover_notebooks(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """``NN_*.ipynb`` in ``notebooks_dir``, in name order."""
    d = Path(notebooks_dir)
    if not d.is_dir():
        raise MMLibError(f"notebooks folder not found: {d} (pass --notebooks-dir).")
    found = sorted(p for p in d.glob(NOTEBOOK_GLOB) if p.is_file())
    if not found:
        raise MMLibError(f"no notebooks named NN_*.ipynb in {d} (pass --notebooks-dir).")
    return found


def select_notebooks(available: Sequence[Path], prefixes: Sequence[str] | None) -> list[Path]:
    """The notebooks whose names start with any of ``prefixes`` (all when empty), in order."""
    if not prefixes or not available:
        return list(available)
    chosen: set[Path] = set()
    for pre in prefixes:
        stem = Path(pre).name.removesuffix(".ipynb")
        hits = [p for p in available if p.stem.startswith(stem)]
        if not hits:
            names = ", ".join(p.stem for p in available)
            raise MMLibError(f"--notebooks {pre!r} matches no notebook in {available[0].parent}. Available: {names}.")
        chosen.update(hits)
    return [p for p in available if p in chosen]


def notebook_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters declared in the notebook's ``parameters``-tagged cell:
    name → {name, inferred_type_name, default, help}, as ``papermill
    --help-notebook`` shows them ({} without such a cell). Parsed with
    papermill's Python translator, the same one ``papermill.inspect_notebook``
    uses, so a notebook without kernel metadata is read too."""
    path = Path(path)
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # nbformat raises several types for a broken file
        raise MMLibError(f"cannot read notebook {path}: {exc}") from exc
    idx = find_first_tagged_cell_index(nb, "parameters")
    if idx < 0:
        return {}
    translator = papermill_translators.find_translator(KERNEL_NAME, "python")
    return {p.name: p._asdict() for p in translator.inspect(nb.cells[idx])}


def parse_param(text: str) -> tuple[str, Any]:
    """``"epochs=5"`` → ("epochs", 5). The value is a Python literal when it
    parses as one (numbers, lists, None, True, quoted strings), else the raw string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise MMLibError(f"-p {text!r}: expected KEY=VALUE with a Python name as KEY (e.g. -p epochs=5).")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    if isinstance(value, tuple):  # papermill writes tuples as strings; a list keeps the values
        value = list(value)
    return key, value


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, value = parse_param(item)
        if key in STANDARD_PARAMS:
            raise MMLibError(f"-p {key}=…: {key!r} is set by the runner; use {_STANDARD_OPTION[key]} instead.")
        out[key] = value
    return out


def check_extras(name: str, declared: dict[str, Any], extras: dict[str, Any]) -> None:
    """Refuse extra parameters the notebook does not declare."""
    unknown = [k for k in extras if k not in declared]
    if unknown:
        valid = ", ".join(declared) or "(none: it has no cell tagged 'parameters')"
        raise MMLibError(f"notebook {name}: unknown parameter(s) {', '.join(unknown)}. "
                         f"Parameters it declares: {valid}.")


def notebook_inputs(declared: dict[str, Any], standard: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """What to inject: the standard values the notebook declares, plus the extras."""
    params = {k: v for k, v in standard.items() if k in declared}
    params.update(extras)
    return params


# --------------------------------------------------------------------------- lock

def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class RunLock:
    """``<out_dir>/.mmlib-run.lock``, created with O_EXCL and holding pid, host and
    start time. A lock whose process is gone (same host) is taken over with a
    warning; a live one (or one from another host) stops the run."""

    STALE_UNREADABLE_S = 60  # an empty/garbled lock older than this is a crash leftover

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / LOCK_NAME
        self.held = False

    def _read(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return info if isinstance(info, dict) else None
        except (OSError, ValueError):
            return None

    def _stale_reason(self, info: dict[str, Any] | None) -> str | None:
        if info is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "it vanished"
            return f"it is unreadable and {age:.0f} s old" if age > self.STALE_UNREADABLE_S else None
        if info.get("host") != socket.gethostname():
            return None  # can't check a process on another machine
        try:
            pid = int(info.get("pid"))
        except (TypeError, ValueError):
            return "it names no valid pid"
        if pid == os.getpid():
            return None  # a lock of this very process is live (e.g. a nested call)
        return None if _pid_alive(pid) else f"process {pid} is not running"

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                reason = self._stale_reason(info)
                if reason is None:
                    info = info or {}
                    raise MMLibError(
                        f"another run (pid {info.get('pid', '?')} on {info.get('host', '?')}, started "
                        f"{info.get('started', '?')}) is writing to {self.path.parent}; wait for it or remove "
                        f"the lock file {self.path} if that process is gone.")
                _warn(f"taking over a stale lock {self.path} ({reason}; it was "
                      f"pid {(info or {}).get('pid', '?')} started {(info or {}).get('started', '?')}).")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(),
                           "argv": sys.argv}, fh)
            self.held = True
            return self
        raise MMLibError(f"could not take the lock {self.path}: another run keeps creating it.")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        info = self._read()
        if info is None or (info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------- run log and index

def load_runs(out_dir: str | Path) -> dict[str, Any]:
    """``runs.json``: {"updated": date, "runs": {dataset: {notebook: entry}}}."""
    path = Path(out_dir) / RUNS_NAME
    if not path.exists():
        return {"updated": None, "runs": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MMLibError(f"{path} is not a readable run log ({exc}); fix it or delete it "
                         f"(deleting only forgets the statuses shown in index.html).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise MMLibError(f"{path} does not look like an mmlib run log; delete it to start a fresh one.")
    return data


def save_runs(out_dir: str | Path, runs: dict[str, Any]) -> None:
    runs["updated"] = utc_now()
    atomic_write_json(Path(out_dir) / RUNS_NAME, runs)


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #d0d7de;
padding-bottom:.3rem}.sub{color:#59636e;margin-top:0}table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e6e8eb;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.failed{color:#cf222e;font-weight:600}.err{color:#cf222e;font-size:.82rem;
font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap}.note{color:#59636e;font-size:.82rem}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}code{font-size:.85rem}
tfoot td{font-weight:600;background:#f6f8fa}
"""


def render_index(runs: dict[str, Any], out_dir: str | Path) -> str:
    """A self-contained HTML page: one table per dataset (notebook, status,
    runtime, device, profile, commit, date) with links to the rendered notebooks."""
    out_dir = Path(out_dir)
    esc = html.escape
    table = runs.get("runs", {})
    entries = [e for nbs in table.values() for e in nbs.values()]
    n_failed = sum(e.get("status") != "ok" for e in entries)
    latest = max((e for e in entries if e.get("date")), key=lambda e: e["date"], default={})
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>mmlib reports</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>mmlib reports</h1>",
        f"<p class=\"sub\">{len(entries)} notebook run(s) on {len(table)} dataset(s), "
        f"{'<span class=failed>' + str(n_failed) + ' failed</span>' if n_failed else 'all ok'}"
        f" &middot; last run {esc(str(latest.get('date', '—')))} (profile {esc(str(latest.get('profile', '—')))},"
        f" commit <code>{esc(str(latest.get('commit') or 'unknown'))}</code>)"
        f" &middot; generated by <code>python -m mmlib.reports</code></p>",
    ]
    if not table:
        parts.append("<p>No runs yet.</p>")
    for dataset, nbs in table.items():
        ds_dir = out_dir / dataset
        parts.append(f"<h2>{esc(dataset)}</h2>")
        links = [f"<a href=\"{esc(dataset)}/{name}\">{name}</a>" for name in (EXPERIMENTS_NAME, "postmortem.md")
                 if (ds_dir / name).exists()]
        if links:
            parts.append(f"<p class=\"note\">Generated from the records: {' &middot; '.join(links)}</p>")
        parts.append("<table><thead><tr><th>notebook</th><th>status</th><th>runtime</th><th>device</th>"
                     "<th>profile</th><th>commit</th><th>date (UTC)</th></tr></thead><tbody>")
        total = 0.0
        for name in sorted(nbs):
            e = nbs[name]
            total += float(e.get("runtime_s") or 0)
            has_html = (ds_dir / f"{name}.html").exists()
            cell = f"<a href=\"{esc(dataset)}/{esc(name)}.html\">{esc(name)}</a>" if has_html else esc(name)
            status = e.get("status", "?")
            cls = "ok" if status == "ok" else "failed"
            extra = ""
            if status != "ok":
                extra = f"<div class=\"err\">{esc(str(e.get('error') or ''))}</div>"
                if has_html:
                    extra += "<div class=\"note\">the link shows the last successful run</div>"
            parts.append(
                f"<tr><td>{cell}{extra}</td><td class=\"{cls}\">{esc(status)}</td>"
                f"<td class=\"num\">{esc(fmt_duration(e.get('runtime_s')))}</td><td>{esc(str(e.get('device') or ''))}</td>"
                f"<td>{esc(str(e.get('profile') or ''))}</td><td><code>{esc(str(e.get('commit') or 'unknown'))}</code></td>"
                f"<td>{esc(str(e.get('date') or ''))}</td></tr>")
        parts.append(f"</tbody><tfoot><tr><td>total</td><td></td><td class=\"num\">{esc(fmt_duration(total))}</td>"
                     "<td colspan=\"4\"></td></tr></tfoot></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_index(out_dir: str | Path, runs: dict[str, Any]) -> Path:
    path = Path(out_dir) / INDEX_NAME
    atomic_write_text(path, render_index(runs, out_dir))
    return path


def write_experiments(out_dir: str | Path, dataset: str) -> Path:
    """Regenerate ``<out_dir>/<dataset>/experiments.md`` from the published records."""
    path = Path(out_dir) / dataset / EXPERIMENTS_NAME
    atomic_write_text(path, experiments_markdown(load_records(out_dir, dataset=dataset), dataset))
    return path


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
                 html_output: bool = True, default_device: str | None = None) -> NotebookResult:
    """Execute one notebook for one dataset and publish its outputs (see the module doc)."""
    name = nb_path.stem
    ds_dir = out_dir / dataset
    staging = ds_dir / f"{STAGING_PREFIX}{name}"
    executed = staging / EXECUTED_NAME
    kernel_log = staging / KERNEL_LOG_NAME
    if staging.exists():
        shutil.rmtree(staging)  # leftover of an earlier failed run
    staging.mkdir(parents=True)
    standard = {"dataset": dataset, "profile": profile, "device": device,
                "out_dir": str(staging), "records_dir": str(out_dir)}
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
        run_device = run_device or default_device or device
        if html_output:
            prov = (f"*Rendered by `python -m mmlib.reports` on {utc_now()}: dataset **{dataset}**, "
                    f"profile **{profile}**, device `{run_device}`, commit `{commit or 'unknown'}`, "
                    f"runtime {fmt_duration(runtime)}.*")
            html_tmp = staging / f".{name}.html"
            atomic_write_text(html_tmp, _render_html(nb, f"{dataset} · {name}", prov))
            moves.append((html_tmp, ds_dir / f"{name}.html"))  # last: its presence means the rest is in place
        for src, dst in moves:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
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
    ap.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS), metavar="NAME",
                    help="datasets to run (default: %(default)s)")
    ap.add_argument("--notebooks", nargs="+", default=None, metavar="NN",
                    help="notebook name prefixes, e.g. 00 10 (default: all, in order)")
    ap.add_argument("--out-dir", type=Path, default=REPORTS_DIR, help="reports folder (default: %(default)s)")
    ap.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR,
                    help="folder of NN_*.ipynb notebooks (default: %(default)s)")
    ap.add_argument("--device", default="auto", help="device passed to the notebooks: auto, cpu, cuda, mps")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra notebook parameter (repeatable); VALUE is a Python literal or a string; "
                         "every selected notebook must declare KEY")
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


def _check_datasets(datasets: Sequence[str]) -> None:
    try:
        from mmlib.data import available_datasets
    except ImportError:  # the registry is not importable here; the notebooks will say what is wrong
        return
    known = available_datasets()
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise MMLibError(f"unknown dataset(s) {', '.join(unknown)}. Available: {', '.join(known)}.")
    # the notebooks load a dataset by its name alone: one whose loader needs arguments (your own
    # files: folder, embeddings) would only fail inside the first notebook
    from mmlib.data import required_parameters
    needs = {d: required_parameters(d) for d in datasets}
    needs = {d: r for d, r in needs.items() if r}
    if needs:
        what = "; ".join(f"{d!r} needs {', '.join(r)}" for d, r in needs.items())
        raise MMLibError(f"dataset(s) {', '.join(needs)} need arguments the runner cannot pass to the notebooks "
                         f"({what}). Load your own data from Python or a notebook with "
                         f"mmlib.data.load_dataset(name, ...); the runner runs {', '.join(DEFAULT_DATASETS)}.")


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
    get_profile(args.profile)
    datasets = list(dict.fromkeys(args.datasets))
    _check_datasets(datasets)
    extras = parse_params(args.param)
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

    with RunLock(out_dir):
        commit = git_commit()
        default_device = _resolved_device(args.device)
        runs = load_runs(out_dir)
        total = len(datasets) * len(notebooks)
        _say(f"mmlib reports: {len(notebooks)} notebook(s) x {len(datasets)} dataset(s), profile {args.profile}, "
             f"device {args.device}, commit {commit or 'unknown'} -> {out_dir}")
        t_all = time.perf_counter()
        i = 0
        for dataset in datasets:
            for nb in notebooks:
                i += 1
                tag = f"[{i}/{total}] {dataset} {nb.stem}"
                _say(f"{tag} …")
                res = run_notebook(nb, dataset, declared[nb], extras, profile=args.profile, device=args.device,
                                   out_dir=out_dir, notebooks_dir=notebooks_dir, commit=commit,
                                   html_output=not args.no_html, default_device=default_device)
                runs["runs"].setdefault(dataset, {})[nb.stem] = {
                    "status": res.status, "runtime_s": round(res.runtime_s, 2), "device": res.device,
                    "commit": commit, "profile": args.profile, "date": utc_now(), "error": res.error}
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
