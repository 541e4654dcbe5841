"""Behaviour tests for encoders, fusions, the multimodal model and the losses."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_dataset
from mmlib.data.base import Modality
from mmlib.models import (
    FUSIONS,
    EarlyFusion,
    ImageCNN,
    LateFusion,
    TabularMLP,
    TextBagOfWords,
    BiTextGRU,
    TextGRU,
    build_encoder,
    build_model,
    build_model_from_config,
    cosine_loss,
    info_nce,
)
from mmlib.training.metrics import smape_percent as smape
from mmlib.training.tasks import get_task

from mmlib.utils import MMLibError, set_seeds

DIMS = {"a": 5, "b": 7, "c": 3}


def _feats_and_mask(b: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(b, d, generator=g) for m, d in DIMS.items()}
    present = {m: torch.rand(b, generator=g) > 0.4 for m in DIMS}
    # row 0: everything; rows 1-3: one modality each; row 4: nothing present
    for i, m in enumerate(DIMS):
        present[m][0] = True
        for r in (1, 2, 3):
            present[m][r] = r == i + 1
        present[m][4] = False
    return feats, present


# ---------------------------------------------------------------------- fusions
@pytest.mark.parametrize("name", list(FUSIONS))
def test_fusion_shapes_and_missing_rows(name):
    set_seeds(0)
    fusion = FUSIONS[name](DIMS, out_dim=2, hidden=16).eval()
    feats, present = _feats_and_mask()
    out = fusion(feats, present)
    assert out["pred"].shape == (12, 2)
    assert torch.isfinite(out["pred"]).all()
    mask = torch.stack([present[m] for m in DIMS], dim=1)
    if "weights" in out:
        w = out["weights"]
        assert w.shape == (12, 3) and torch.isfinite(w).all()
        assert (w[~mask] == 0).all(), "an absent modality got weight"
        has = mask.any(dim=1)
        torch.testing.assert_close(w[has].sum(dim=1), torch.ones(int(has.sum())))
        for r in (1, 2, 3):  # a row with one modality puts all the weight on it
            assert w[r, r - 1].item() == pytest.approx(1.0)
    if "unimodal" in out:
        assert set(out["unimodal"]) == set(DIMS) and all(u.shape == (12, 2) for u in out["unimodal"].values())
    out["pred"].sum().backward()  # differentiable, also through the rows with missing modalities


@pytest.mark.parametrize("name", list(FUSIONS))
def test_fusion_ignores_absent_features(name):
    set_seeds(0)
    fusion = FUSIONS[name](DIMS, out_dim=1, hidden=16).eval()
    feats, present = _feats_and_mask()
    base = fusion(feats, present)["pred"]
    noisy = {}
    for m, f in feats.items():
        junk = torch.randn_like(f) * 100
        junk[0, 0] = float("nan")  # even a NaN in an absent slot must not leak
        noisy[m] = torch.where(present[m][:, None], f, junk)
    torch.testing.assert_close(fusion(noisy, present)["pred"], base)
    # and the features of a present modality do matter
    changed = dict(feats, a=feats["a"] + 1.0)
    assert not torch.allclose(fusion(changed, present)["pred"][0], base[0])


def _xor_data(n: int, g: torch.Generator):
    a = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    b = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    # y = a·b has zero marginal signal in either modality: pure synergy (one noise column each)
    feats = {"m1": torch.stack([a, torch.randn(n, generator=g)], 1),
             "m2": torch.stack([b, torch.randn(n, generator=g)], 1)}
    return feats, {m: torch.ones(n, dtype=torch.bool) for m in feats}, a * b


def _xor_test_mse(fusion, steps: int = 300) -> float:
    """Train on one XOR sample, return the MSE on a fresh one (y has variance 1)."""
    g = torch.Generator().manual_seed(0)
    train, test = _xor_data(256, g), _xor_data(256, g)
    opt = torch.optim.Adam(fusion.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        feats, present, y = train
        loss = ((fusion(feats, present)["pred"].squeeze(-1) - y) ** 2).mean()
        loss.backward()
        opt.step()
    fusion.eval()
    feats, present, y = test
    with torch.no_grad():
        return float(((fusion(feats, present)["pred"].squeeze(-1) - y) ** 2).mean())


def test_late_fusion_cannot_fit_xor_but_early_can():
    set_seeds(0)
    dims = {"m1": 2, "m2": 2}
    late = _xor_test_mse(LateFusion(dims, 1, hidden=32, dropout=0.0))
    early = _xor_test_mse(EarlyFusion(dims, 1, hidden=32, dropout=0.0))
    assert late > 0.9, f"late fusion predicted a cross-modal interaction (test MSE {late:.3f})"
    assert early < 0.1, f"early fusion failed to fit XOR (test MSE {early:.3f})"


# --------------------------------------------------------------------- encoders
def test_text_gru_is_order_sensitive_and_bow_is_not():
    set_seeds(0)
    tokens = torch.tensor([[2, 3, 4, 5, 0, 0], [5, 4, 3, 2, 0, 0], [0, 0, 0, 0, 0, 0]])
    gru = TextGRU(vocab_size=10, out_dim=8).eval()
    bow = TextBagOfWords(vocab_size=10, out_dim=8).eval()
    g = gru({"tokens": tokens})
    w = bow({"tokens": tokens})
    assert g.shape == w.shape == (3, 8)
    assert torch.isfinite(g).all() and torch.isfinite(w).all()  # the empty row too
    assert (g[0] - g[1]).abs().max() > 1e-4
    torch.testing.assert_close(w[0], w[1])
    # padding is not read: the same row with fewer padding columns gives the same output
    torch.testing.assert_close(gru({"tokens": tokens[:2, :4]}), g[:2])
    torch.testing.assert_close(bow({"tokens": tokens[:2, :4]}), w[:2])
    # the empty row backpropagates without NaN
    gru.train()
    gru({"tokens": tokens}).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gru.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", [TextGRU, BiTextGRU])
def test_text_gru_never_reads_padding_whatever_the_batch(cls):
    """A row's output depends on its own tokens only: not on how many padding columns the
    tensor has, nor on the other rows of the batch (which set how far rows are shifted)."""
    set_seeds(0)
    gru = cls(vocab_size=30, out_dim=8).eval()
    short = torch.tensor([[4, 7, 9, 0, 0, 0, 0, 0, 0, 0]])
    long = torch.tensor([[3, 5, 8, 11, 13, 17, 19, 23, 29, 2]])
    alone = gru({"tokens": short[:, :3]})
    with_long = gru({"tokens": torch.cat([short, long])})[:1]
    torch.testing.assert_close(with_long, alone, rtol=1e-5, atol=1e-6)
    # and it still reads order: the reversed row differs
    assert (gru({"tokens": torch.tensor([[9, 7, 4]])}) - alone).abs().max() > 1e-4


def test_left_align_moves_padding_first():
    from mmlib.models.encoders import left_align, token_lengths
    t = torch.tensor([[1, 2, 3, 0], [5, 0, 0, 0], [0, 0, 0, 0], [6, 7, 8, 9]])
    out = left_align(t, token_lengths(t))
    assert out.tolist() == [[0, 1, 2, 3], [0, 0, 0, 5], [0, 0, 0, 0], [6, 7, 8, 9]]


@pytest.mark.parametrize("width", ["small", "wide"])
@pytest.mark.parametrize("size", [32, 64])
def test_image_cnn_sizes(width, size):
    cnn = ImageCNN(out_dim=10, width=width, in_size=size)
    px = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    out = cnn({"pixels": px})
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.sum().backward()


def test_tabular_mlp_handles_missing_column_kinds_and_unseen_levels():
    only_cat = TabularMLP(0, [4, 3], out_dim=6).eval()
    cat = torch.tensor([[0, 1], [3, 2], [9, 2]])  # 9: a level beyond the table reads as unknown (0)
    out = only_cat({"num": torch.zeros(3, 0), "cat": cat})
    assert out.shape == (3, 6)
    torch.testing.assert_close(out[2], only_cat({"num": torch.zeros(1, 0), "cat": torch.tensor([[0, 2]])})[0])
    only_num = TabularMLP(2, [], out_dim=6)
    assert only_num({"num": torch.randn(3, 2), "cat": torch.zeros(3, 0, dtype=torch.long)}).shape == (3, 6)
    with pytest.raises(MMLibError):
        TabularMLP(0, [])


def test_build_encoder_reads_modality_and_rejects_unknown_arch(tiny_dataset):
    text = build_encoder(tiny_dataset.modalities["text"], "bow", out_dim=12)
    assert isinstance(text, TextBagOfWords) and text.out_dim == 12
    wide = build_encoder(tiny_dataset.modalities["image"], "cnn_wide")
    assert isinstance(wide, ImageCNN) and wide.width == "wide" and wide.in_size == 16
    emb = Modality("clip", "embedding", {"x": torch.randn(5, 24)}, torch.ones(5, dtype=torch.bool))
    enc = build_encoder(emb)
    x = torch.randn(5, 24)
    x[0] = 0  # an all-zero embedding must not give NaN
    assert enc({"x": x}).shape == (5, 64) and torch.isfinite(enc({"x": x})).all()
    with pytest.raises(MMLibError, match="gru"):
        build_encoder(tiny_dataset.modalities["text"], "lstm")
    with pytest.raises(MMLibError, match="hidden"):
        build_encoder(tiny_dataset.modalities["text"], "gru", hiden=3)


# ------------------------------------------------------------------------ model
@pytest.mark.parametrize("name", list(FUSIONS))
def test_build_model_forward_backward_every_fusion(name, tiny_dataset):
    set_seeds(0)
    model = build_model(tiny_dataset, fusion=name, hidden=16, feat_dim=16, aux_heads=True)
    batch = tiny_dataset.batch(torch.arange(40))
    out = model(batch["inputs"], batch["present"])
    assert out["pred"].shape == (40, 1) and torch.isfinite(out["pred"]).all()
    assert set(out["features"]) == {"tabular", "text", "image"}
    assert set(out["unimodal"]) == {"tabular", "text", "image"}
    for m, f in out["features"].items():  # absent rows carry zero features
        assert (f[~batch["present"][m]] == 0).all()
    loss = get_task("regression").loss()(out["pred"], batch["y"])
    loss = loss + sum(get_task("regression").loss()(u, batch["y"]) for u in out["unimodal"].values())
    loss.backward()
    for branch, params in model.branch_parameters().items():
        grads = [p.grad for p in params if p.grad is not None]
        assert grads, f"branch {branch} got no gradient"
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list(FUSIONS))
def test_model_prediction_ignores_absent_modality_inputs(name):
    ds = make_tiny_dataset(n=60, missing=0.4)
    set_seeds(0)
    model = build_model(ds, fusion=name, hidden=16, feat_dim=16).eval()
    batch = ds.batch(torch.arange(60))
    base = model(batch["inputs"], batch["present"])["pred"]
    inputs = {m: dict(t) for m, t in batch["inputs"].items()}
    absent = ~batch["present"]["image"]
    assert absent.any()
    px = inputs["image"]["pixels"].clone()
    px[absent] = 255
    inputs["image"]["pixels"] = px
    tok = inputs["text"]["tokens"].clone()
    tok[~batch["present"]["text"]] = 7
    inputs["text"]["tokens"] = tok
    torch.testing.assert_close(model(inputs, batch["present"])["pred"], base)


def test_absent_rows_do_not_touch_batchnorm_in_training():
    """Encoders see only present rows, so garbage in absent rows cannot shift BatchNorm statistics."""
    ds = make_tiny_dataset(n=60, missing=0.4)
    set_seeds(0)
    model = build_model(ds, fusion="early", hidden=16, feat_dim=16).train()
    batch = ds.batch(torch.arange(60))
    torch.manual_seed(1)
    base = model(batch["inputs"], batch["present"])["pred"]
    inputs = dict(batch["inputs"], image={"pixels": batch["inputs"]["image"]["pixels"].clone()})
    inputs["image"]["pixels"][~batch["present"]["image"]] = 255
    torch.manual_seed(1)  # same dropout masks
    torch.testing.assert_close(model(inputs, batch["present"])["pred"], base)


def test_extra_modalities_ignored_and_missing_ones_rejected(tiny_dataset):
    model = build_model(tiny_dataset, fusion="late", modalities=["tabular", "text"]).eval()
    batch = tiny_dataset.batch(torch.arange(10))
    out = model(batch["inputs"], batch["present"])  # the image entry is ignored
    assert set(out["features"]) == {"tabular", "text"}
    with pytest.raises(MMLibError, match="text"):
        model({"tabular": batch["inputs"]["tabular"]}, batch["present"])


def test_param_counts_and_branch_groups(tiny_dataset):
    model = build_model(tiny_dataset, fusion="gated", aux_heads=True)
    counts = model.param_counts()
    assert set(counts) == {"tabular", "text", "image", "fusion", "total"}
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    groups = model.param_groups(1e-3, branch_lr={"image": 1e-4, "fusion": 5e-3}, weight_decay=0.01)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"tabular": 1e-3, "text": 1e-3, "image": 1e-4, "fusion": 5e-3}
    assert all(g["weight_decay"] == 0.01 for g in groups)
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]
    with pytest.raises(MMLibError, match="tabular"):
        model.param_groups(1e-3, branch_lr={"audio": 1e-4})


def test_modality_dropout_keeps_one_present_and_is_off_in_eval():
    ds = make_tiny_dataset(n=200, missing=0.3)
    set_seeds(0)
    model = build_model(ds, fusion="early", hidden=16, feat_dim=16, modality_dropout=0.8)
    batch = ds.batch(torch.arange(200))
    orig = torch.stack([batch["present"][m] for m in model.modalities], dim=1)
    kept = model(batch["inputs"], batch["present"])["present"]
    used = torch.stack([kept[m] for m in model.modalities], dim=1)
    assert (used <= orig).all(), "dropout turned an absent modality on"
    assert used.any(dim=1).all(), "a row lost every modality"
    assert used.sum() < 0.6 * orig.sum(), "hardly anything was dropped at p=0.8"
    model.eval()
    out = model(batch["inputs"], batch["present"])
    assert all(torch.equal(out["present"][m], batch["present"][m]) for m in model.modalities)


def test_build_model_errors_and_config(tiny_dataset):
    with pytest.raises(MMLibError, match="lowrank_tensor"):
        build_model(tiny_dataset, fusion="tensor")
    with pytest.raises(MMLibError, match="tabular"):
        build_model(tiny_dataset, modalities=["audio"])
    with pytest.raises(MMLibError, match="rank"):
        build_model(tiny_dataset, fusion="lowrank_tensor", rnak=2)
    with pytest.raises(MMLibError, match="cnn_small"):
        build_model(tiny_dataset, encoder_archs={"image": "resnet"})
    model = build_model(tiny_dataset, fusion="attention", encoder_archs={"text": "bow"}, heads=2, hidden=32)
    assert model.config["fusion"] == "attention" and model.config["fusion_kwargs"] == {"heads": 2}
    assert model.config["encoder_archs"] == {"tabular": "mlp", "text": "bow", "image": "cnn_strided"}
    again = build_model_from_config(tiny_dataset, model.config)
    assert again.param_counts() == model.param_counts()


def test_classification_output_width(tiny_classification):
    model = build_model(tiny_classification, fusion="moe")
    batch = tiny_classification.batch(torch.arange(16))
    out = model(batch["inputs"], batch["present"])
    assert out["pred"].shape == (16, 3) and out["gates"].shape == (16, 3)
    get_task("multiclass").loss()(out["pred"], batch["y"]).backward()
    probs = get_task("multiclass").predict(out["pred"])
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(16))


# ----------------------------------------------------------------------- losses
def test_losses():
    pred = torch.tensor([[1.0], [2.0], [4.0]])
    y = torch.tensor([1.0, 3.0, 2.0])
    assert get_task("regression").loss()(pred, y).item() == pytest.approx((0 + 1 + 4) / 3)
    assert get_task("regression").loss("huber")(pred, y).item() == pytest.approx((0 + 0.5 + 1.5) / 3)
    per = [0.0, 2 / 5, 4 / 6]
    assert get_task("regression").loss("smape")(pred, y).item() == pytest.approx(sum(per) / 3, rel=1e-4)
    w = torch.tensor([0.0, 1.0, 3.0])
    assert get_task("regression").loss("smape")(pred, y, w).item() == pytest.approx((per[1] + 3 * per[2]) / 4, rel=1e-4)
    assert smape(pred, y) == pytest.approx(100 * sum(per) / 3, rel=1e-6)
    assert smape([0.0, 1.0], [0.0, 1.0]) == 0.0
    logits = torch.tensor([[2.0], [-1.0]])
    bce = get_task("binary").loss()(logits, torch.tensor([1, 0]))
    assert bce.item() == pytest.approx(torch.nn.functional.softplus(torch.tensor([-2.0, -1.0])).mean().item())
    torch.testing.assert_close(get_task("binary").predict(logits), torch.sigmoid(logits[:, 0]))
    with pytest.raises(MMLibError, match="bce"):
        get_task("binary").loss("mse")
    with pytest.raises(MMLibError):
        get_task("ranking").loss()


def test_info_nce_prefers_matched_pairs_and_cosine_loss():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 16, generator=g)
    b = a + 0.1 * torch.randn(32, 16, generator=g)
    shuffled = b[torch.randperm(32, generator=g)]
    assert info_nce(a, b).item() < info_nce(a, shuffled).item() - 1.0
    torch.testing.assert_close(info_nce(a, b), info_nce(b, a))  # symmetric
    assert cosine_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(a, -a).item() == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("name", list(FUSIONS))
def test_every_fusion_learns_on_the_tiny_dataset(name, tiny_dataset):
    """Model behaviour: a short full-batch run brings validation MSE well under the target variance."""
    ds = tiny_dataset
    set_seeds(0)
    model = build_model(ds, fusion=name, hidden=32, feat_dim=32)
    opt = torch.optim.Adam(model.param_groups(3e-3))
    loss_fn = get_task("regression").loss()
    train, val = ds.batch(ds.splits["train"]), ds.batch(ds.splits["val"])
    for _ in range(40):
        opt.zero_grad()
        loss_fn(model(train["inputs"], train["present"])["pred"], train["y"]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val_mse = loss_fn(model(val["inputs"], val["present"])["pred"], val["y"]).item()
    assert val_mse < 0.5 * val["y"].var().item()
