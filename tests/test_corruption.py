"""mmlib.analysis.robustness.corrupt_batch: one meaning of the noise level for every
modality kind. Level 0 is the clean input; level 1 is noise with the modality's own
training-split marginal (continuous: N(mu, sigma^2) per column / channel / dimension;
discrete: draws from each column's / the token marginal); in between the variance of a
continuous tensor stays the marginal one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.analysis.robustness import corrupt_batch, corruption_stats
from mmlib.data.base import Modality, MultimodalDataset, make_splits

N = 4000
CAT_P = [np.array([0.0, 0.6, 0.3, 0.1]), np.array([0.0, 0.2, 0.8])]
TOK_P = np.r_[0.0, 0.0, 1.0 / np.arange(1, 29)]  # ids 2..29, Zipf-like; 0 = padding, 1 = OOV unused
TOK_P = TOK_P / TOK_P.sum()


@pytest.fixture(scope="module")
def marg() -> MultimodalDataset:
    """Every kind, with known non-standard marginals, and 5 % of rows missing each modality."""
    g = np.random.default_rng(0)
    num = np.c_[g.normal(5, 2, N), g.normal(-1, 0.5, N)].astype(np.float32)
    cat = np.c_[[g.choice(len(p), size=N, p=p) for p in CAT_P]].T
    tokens = np.zeros((N, 8), dtype=np.int64)
    lengths = g.integers(1, 9, size=N)
    for i in range(N):
        tokens[i, : lengths[i]] = g.choice(len(TOK_P), size=lengths[i], p=TOK_P)
    means = np.array([80.0, 128.0, 170.0])[None, :, None, None]
    pixels = np.clip(np.round(g.normal(means, 20.0, size=(N, 3, 4, 4))), 0, 255).astype(np.uint8)
    x = (g.normal(size=(N, 5)) * np.arange(1, 6) + np.arange(5)).astype(np.float32)
    tensors = {"tab": ("tabular", {"num": num, "cat": cat}, {"cat_cardinalities": [4, 3]}),
               "txt": ("text", {"tokens": tokens}, {"vocab_size": 30}),
               "img": ("image", {"pixels": pixels}, {"size": 4}),
               "emb": ("embedding", {"x": x}, {"dim": 5})}
    mods = {}
    for name, (kind, ts, info) in tensors.items():
        present = torch.from_numpy(g.random(N) >= 0.05)
        ts = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ts.items()}
        for t in ts.values():
            t[~present] = 0
        mods[name] = Modality(name, kind, ts, present, info)
    return MultimodalDataset("marg", mods, torch.from_numpy(g.normal(size=N).astype(np.float32)), "regression",
                             make_splits(N, 0))


def _corrupt(ds, mod, level, seed=0):
    batch = ds.batch(np.arange(ds.n))
    out = corrupt_batch(batch, mod, level, torch.Generator().manual_seed(seed), stats=corruption_stats(ds, mod))
    return batch, out["inputs"][mod], batch["present"][mod]


def _train_present(ds, mod):
    rows = torch.as_tensor(ds.splits["train"])
    return rows[ds.modalities[mod].present[rows]]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().numpy().ravel(), b.double().numpy().ravel())[0, 1])


@pytest.mark.parametrize("mod", ["tab", "txt", "img", "emb"])
def test_level0_returns_the_input_unchanged(marg, mod):
    batch, out, _ = _corrupt(marg, mod, 0.0)
    for k, t in batch["inputs"][mod].items():
        assert torch.equal(out[k], t)


@pytest.mark.parametrize("mod,key", [("tab", "num"), ("emb", "x")])
def test_continuous_level1_is_the_marginal_and_intermediate_levels_keep_the_variance(marg, mod, key):
    clean_all = marg.modalities[mod].tensors[key]
    train = clean_all[_train_present(marg, mod)].double()
    mu, sd = train.mean(0), train.std(0)
    stats = corruption_stats(marg, mod)[key]
    assert torch.allclose(stats["mean"].double(), mu, rtol=1e-4, atol=1e-4)
    assert torch.allclose(stats["std"].double(), sd, rtol=1e-3)
    batch, out, present = _corrupt(marg, mod, 1.0)
    noisy, clean = out[key][present].double(), batch["inputs"][mod][key][present].double()
    assert torch.all((noisy.mean(0) - mu).abs() / sd < 0.06)
    assert torch.allclose(noisy.std(0) / sd, torch.ones_like(sd), atol=0.05)
    for j in range(noisy.shape[1]):
        assert abs(_corr(noisy[:, j], clean[:, j])) < 0.06
    for level in (0.25, 0.5, 0.75):
        _, out, _ = _corrupt(marg, mod, level)
        noisy = out[key][present].double()
        assert torch.allclose(noisy.std(0) / sd, torch.ones_like(sd), atol=0.05)  # variance kept at every level
        for j in range(noisy.shape[1]):
            assert _corr(noisy[:, j], clean[:, j]) == pytest.approx(np.sqrt(1 - level), abs=0.04)
    assert not out[key][~present].any()  # absent rows keep their zeros


def test_pixels_per_channel_marginal_uint8(marg):
    train = marg.modalities["img"].tensors["pixels"][_train_present(marg, "img")].double()
    mu = train.mean(dim=(0, 2, 3))
    sd = train.transpose(0, 1).reshape(3, -1).std(1)
    stats = corruption_stats(marg, "img")["pixels"]
    assert torch.allclose(stats["mean"].double(), mu, atol=1e-3)
    assert torch.allclose(stats["std"].double(), sd, rtol=1e-3)
    batch, out, present = _corrupt(marg, "img", 1.0)
    px = out["pixels"]
    assert px.dtype == torch.uint8 and px.shape == batch["inputs"]["img"]["pixels"].shape
    noisy, clean = px[present].double(), batch["inputs"]["img"]["pixels"][present].double()
    assert torch.allclose(noisy.mean(dim=(0, 2, 3)), mu, atol=1.0)  # mu +- 3 sigma inside [0, 255]: no clipping
    assert torch.allclose(noisy.transpose(0, 1).reshape(3, -1).std(1) / sd, torch.ones(3, dtype=torch.float64),
                          atol=0.05)
    for c in range(3):
        assert abs(_corr(noisy[:, c], clean[:, c])) < 0.03
    _, half, _ = _corrupt(marg, "img", 0.5)
    half = half["pixels"][present].double()
    assert torch.allclose(half.transpose(0, 1).reshape(3, -1).std(1) / sd, torch.ones(3, dtype=torch.float64),
                          atol=0.05)


def _freq(values: torch.Tensor, size: int) -> np.ndarray:
    c = np.bincount(values.numpy().ravel(), minlength=size).astype(float)
    return c / c.sum()


def test_categorical_level1_draws_each_columns_marginal(marg):
    cat_all = marg.modalities["tab"].tensors["cat"]
    train = cat_all[_train_present(marg, "tab")]
    batch, out, present = _corrupt(marg, "tab", 1.0)
    noisy, clean = out["cat"][present], batch["inputs"]["tab"]["cat"][present]
    for j, p in enumerate(CAT_P):
        want = _freq(train[:, j], len(p))
        assert np.abs(_freq(noisy[:, j], len(p)) - want).max() < 0.03
        # independent of the clean value: agreement at the chance rate sum_k p_k^2
        assert float((noisy[:, j] == clean[:, j]).double().mean()) == pytest.approx(float((want ** 2).sum()), abs=0.03)
    _, half, _ = _corrupt(marg, "tab", 0.5)
    changed = float((half["cat"][present] != clean).double().mean())
    chance = np.mean([1 - (_freq(train[:, j], len(p)) ** 2).sum() for j, p in enumerate(CAT_P)])
    assert changed == pytest.approx(0.5 * chance, abs=0.03)


def test_tokens_level1_draws_the_token_marginal_and_keep_padding(marg):
    tok_all = marg.modalities["txt"].tensors["tokens"]
    train = tok_all[_train_present(marg, "txt")]
    want = _freq(train[train != 0], 30)
    for level in (0.3, 1.0):
        batch, out, present = _corrupt(marg, "txt", level)
        tok, clean = out["tokens"], batch["inputs"]["txt"]["tokens"]
        assert torch.equal(tok == 0, clean == 0)  # padding stays padding; lengths kept
        assert tok.shape == clean.shape
    real = clean != 0
    assert np.abs(_freq(tok[real], 30) - want).max() < 0.02
    agree = float((tok[real] == clean[real]).double().mean())
    assert agree == pytest.approx(float((want ** 2).sum()), abs=0.02)


def test_without_stats_the_batch_marginal_is_used(marg):
    batch = marg.batch(np.arange(marg.n))
    out = corrupt_batch(batch, "tab", 1.0, torch.Generator().manual_seed(0))["inputs"]["tab"]["num"]
    present = batch["present"]["tab"]
    clean = batch["inputs"]["tab"]["num"][present].double()
    assert torch.allclose(out[present].double().mean(0), clean.mean(0), atol=0.1)
    assert torch.allclose(out[present].double().std(0) / clean.std(0), torch.ones(2, dtype=torch.float64), atol=0.05)
