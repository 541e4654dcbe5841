"""The report runner's lock file: ``RunLock`` keeps two runs from writing into
the same reports folder at once, and takes over a lock whose process is gone.
Also the provenance every run and record carries: the git state (``git_state``,
``git_commit``) and the time (``utc_now``); ``mmlib.reporting.records`` re-exports them."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mmlib.config import PROJECT_ROOT
from mmlib.utils import MMLibError

LOCK_NAME = ".mmlib-run.lock"


# --------------------------------------------------------------------------- provenance

def git_state(root: str | Path = PROJECT_ROOT) -> tuple[str | None, list[str]]:
    """(short hash of HEAD, tracked files outside ``reports/`` that differ from it);
    (None, []) when ``root`` is not a git checkout (or git is missing). Reports are
    left out: a run rewrites the reports it is recording, which says nothing about
    the code. Reads only (``--no-optional-locks``: the index is not refreshed)."""
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=20)
        if head.returncode != 0 or not head.stdout.strip():
            return None, []
        status = subprocess.run([*git, "status", "--porcelain", "-z", "--untracked-files=no", "--", ".",
                                 ":(exclude)reports"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None, []
    changed, items = [], iter(status.stdout.split("\0") if status.returncode == 0 else [])
    for item in items:
        if len(item) > 3:
            changed.append(item[3:])
            if item[0] in "RC":  # a rename or copy is followed by its original path
                next(items, None)
    return head.stdout.strip(), changed


def git_commit(root: str | Path = PROJECT_ROOT) -> str | None:
    """Short hash of HEAD, with "+dirty" when tracked files outside ``reports/`` differ
    from it (see ``git_state``); None when ``root`` is not a git checkout."""
    commit, changed = git_state(root)
    return None if commit is None else commit + ("+dirty" if changed else "")


def utc_now() -> str:
    """Current UTC time, ISO 8601 to the second (``2025-01-31T12:00:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- lock

def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


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

