"""``spacecraft``: the embedded synthetic dataset with a planted, known structure.

Each row is a spacecraft with ~40 tabular columns, a one-sentence description
and a small RGB picture. The target is a sum of independent, standardised parts:

==============  ==========================================  ==================
part            where it lives                              default share
==============  ==========================================  ==================
``tabular``     thrust, dry mass, fuel capacity (non-        0.60
                linear) and the manufacturer (categorical)
``redundant``   the size class: ``hull_length_m`` in the     0.26
                table *and* the drawn hull size in the image
``text``        armour level (a modifier: "lightly",         0.05
                "heavily", "not") and the *order* of two
                planets ("built on X and registered on Y")
``image``       the number of engines (1-4) and the hull     0.04
                shape (wedge / block / saucer)
``synergy``     route in the text (inner/outer rim, ±1)      0.04
                × heading in the image (left/right, ±1):
                zero marginal signal in either alone
``noise``       Gaussian                                     0.01
==============  ==========================================  ==================

Because the parts are independent and each is a deterministic function of what
its modalities show, the Bayes-optimal predictor given a subset S of modalities
is the sum of the parts visible in S, and its R² is exactly the sum of their
shares: ``ceilings`` lists all 8 subsets (tabular alone 0.86, all three 0.99).

Nuisance shared by text and image (hull colour, a stripe) carries no signal on
the target but lets text-image retrieval be checked by eye.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmlib.data.base import Modality, MultimodalDataset, make_splits
from mmlib.data.tabular import TabularEncoder
from mmlib.data.text import Vocab
from mmlib.utils import MMLibError

MODALITIES = ("tabular", "text", "image")
PARTS = ("tabular", "redundant", "text", "image", "synergy", "noise")
DEFAULT_SHARES = {"tabular": 0.60, "redundant": 0.26, "text": 0.05, "image": 0.04, "synergy": 0.04, "noise": 0.01}
# which modalities reveal each part (synergy needs both of its modalities)
VISIBLE_IN = {"tabular": {"tabular"}, "redundant": {"tabular", "image"}, "text": {"text"}, "image": {"image"}}
SYNERGY_NEEDS = {"text", "image"}

MANUFACTURERS = ["Aldrin Works", "Borealis", "Cygnus Yards", "Deneb Dynamics", "Eridani Forge", "Fomalhaut"]
MANUFACTURER_EFFECT = np.array([-0.9, -0.4, 0.0, 0.2, 0.45, 0.65])
ARMOUR_PHRASES = ["not armored", "lightly armored", "armored", "heavily armored"]
ARMOUR_EFFECT = np.array([-1.2, -0.4, 0.4, 1.2])
PLANETS = ["mars", "vega", "titan", "kepler", "orion"]
PLANET_VALUE = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
ORDER_WEIGHT = 0.8
ENGINE_EFFECT = np.array([-1.3, -0.4, 0.4, 1.3])  # 1..4 engines
SHAPES = ["wedge", "block", "saucer"]
SHAPE_EFFECT = np.array([-1.0, 0.0, 1.0])
COLORS = {"red": (200, 50, 50), "blue": (60, 90, 210), "green": (50, 170, 70), "yellow": (220, 200, 50), "white": (225, 225, 225)}
CLASS_WORDS = ["cruiser", "freighter", "scout", "corvette", "shuttle"]
NAMES = ["kestrel", "halcyon", "aurora", "nomad", "tempest", "vanguard", "sparrow", "odyssey", "zephyr", "nimbus",
         "argo", "pioneer", "solace", "meridian", "falcon", "lantern"]
HULL_LENGTH_PX = (8, 11, 14, 17)  # at 32 px; size classes 0..3


# ----------------------------------------------------------------- exact moments
def _gauss_expect(f, n: int = 200) -> float:
    """E[f(Z)], Z ~ N(0,1), by Gauss-Hermite quadrature (exact to ~1e-12 for smooth f)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return float(np.sum(w * f(x)) / math.sqrt(2 * math.pi))


def _tabular_raw(z1, z2, z3, mfr):
    return z1 + 0.8 * np.tanh(1.5 * z2) + 0.35 * (z3**2 - 1.0) + MANUFACTURER_EFFECT[mfr]


def _tabular_moments() -> tuple[float, float]:
    var_tanh = _gauss_expect(lambda x: (0.8 * np.tanh(1.5 * x)) ** 2)  # mean is 0 by symmetry
    var_sq = 0.35**2 * 2.0  # Var(Z²) = 2
    mean_c, var_c = MANUFACTURER_EFFECT.mean(), MANUFACTURER_EFFECT.var()
    return float(mean_c), float(1.0 + var_tanh + var_sq + var_c)


def _text_moments() -> tuple[float, float]:
    pairs = [(i, j) for i in range(len(PLANETS)) for j in range(len(PLANETS)) if i != j]
    order = np.array([PLANET_VALUE[i] - PLANET_VALUE[j] for i, j in pairs]) * ORDER_WEIGHT
    return float(ARMOUR_EFFECT.mean() + order.mean()), float(ARMOUR_EFFECT.var() + order.var())


def _image_moments() -> tuple[float, float]:
    return float(ENGINE_EFFECT.mean() + SHAPE_EFFECT.mean()), float(ENGINE_EFFECT.var() + SHAPE_EFFECT.var())


def ceilings_for(shares: dict[str, float]) -> dict[str, float]:
    """Exact R² of the Bayes-optimal predictor for every non-empty subset of modalities
    (keys like ``"image+text"``, sorted names joined by '+'), plus ``"none": 0``."""
    out = {"none": 0.0}
    for r in range(1, len(MODALITIES) + 1):
        for subset in itertools.combinations(sorted(MODALITIES), r):
            out["+".join(subset)] = visible_share(shares, set(subset))
    return out


def visible_share(shares: dict[str, float], modalities: set[str]) -> float:
    total = sum(shares[p] for p, mods in VISIBLE_IN.items() if mods & modalities)
    if SYNERGY_NEEDS <= modalities:
        total += shares["synergy"]
    return float(total)


def _check_shares(shares: dict[str, float] | None) -> dict[str, float]:
    s = dict(DEFAULT_SHARES)
    if shares:
        unknown = set(shares) - set(PARTS)
        if unknown:
            raise MMLibError(f"spacecraft: unknown share(s) {sorted(unknown)}; valid parts: {PARTS}.")
        s.update(shares)
    if any(v < 0 for v in s.values()):
        raise MMLibError(f"spacecraft: shares must be non-negative, got {s}.")
    total = sum(s.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise MMLibError(f"spacecraft: shares must sum to 1 (they are fractions of the target variance); got {total:.4f}.")
    return s


# ------------------------------------------------------------------ generation
@dataclass
class SpacecraftSample:
    frame: pd.DataFrame  # tabular columns (raw units)
    texts: list[str]
    images: np.ndarray  # uint8 [n, 3, S, S]
    latent: pd.DataFrame  # ground-truth factors and standardised parts
    y: np.ndarray  # float64 regression target (variance 1)
    shares: dict[str, float]


def generate(n: int = 12000, seed: int = 0, image_size: int = 32, shares: dict[str, float] | None = None,
             progress: bool = False, render: bool = True) -> SpacecraftSample:
    """Draw ``n`` spacecraft deterministically from ``seed``. ``render=False`` skips
    drawing the images (an all-zero array) for fast checks of the target structure."""
    if n < 10:
        raise MMLibError(f"spacecraft: n={n} is too small; use n >= 10 (default 12000).")
    if image_size not in (32, 64):
        raise MMLibError(f"spacecraft: image_size must be 32 or 64, got {image_size}.")
    shares = _check_shares(shares)
    rng = np.random.default_rng(seed)

    # --- ground-truth factors (all independent)
    z1, z2, z3 = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    mfr = rng.integers(0, len(MANUFACTURERS), n)
    size = rng.integers(0, 4, n)
    armour = rng.integers(0, 4, n)
    pair_idx = rng.integers(0, 20, n)
    pairs = np.array([(i, j) for i in range(5) for j in range(5) if i != j])
    built, registered = pairs[pair_idx, 0], pairs[pair_idx, 1]
    route = rng.choice([-1, 1], n)  # text: inner (-1) / outer (+1) rim
    heading = rng.choice([-1, 1], n)  # image: facing left (-1) / right (+1)
    engines = rng.integers(1, 5, n)
    shape = rng.integers(0, 3, n)
    noise = rng.standard_normal(n)
    # nuisance
    color = rng.integers(0, len(COLORS), n)
    striped = rng.integers(0, 2, n)
    klass = rng.integers(0, len(CLASS_WORDS), n)
    name = rng.integers(0, len(NAMES), n)

    # --- standardised parts (population mean 0, variance 1, computed exactly)
    m, v = _tabular_moments()
    p_tab = (_tabular_raw(z1, z2, z3, mfr) - m) / math.sqrt(v)
    p_red = (size - 1.5) / math.sqrt(1.25)
    m, v = _text_moments()
    p_text = (ARMOUR_EFFECT[armour] + ORDER_WEIGHT * (PLANET_VALUE[built] - PLANET_VALUE[registered]) - m) / math.sqrt(v)
    m, v = _image_moments()
    p_img = (ENGINE_EFFECT[engines - 1] + SHAPE_EFFECT[shape] - m) / math.sqrt(v)
    p_syn = (route * heading).astype(float)
    parts = {"tabular": p_tab, "redundant": p_red, "text": p_text, "image": p_img, "synergy": p_syn, "noise": noise}
    y = sum(math.sqrt(shares[k]) * parts[k] for k in PARTS)

    latent = pd.DataFrame({f"part_{k}": v for k, v in parts.items()})
    latent = latent.assign(z_thrust=z1, z_mass=z2, z_fuel=z3, manufacturer=mfr, size_class=size, armour=armour,
                           built_on=built, registered_on=registered, route=route, heading=heading, engines=engines,
                           shape=shape, color=color, striped=striped)

    frame = _tabular_frame(rng, n, z1, z2, z3, mfr, size)
    texts = [_describe(name[i], color[i], striped[i], klass[i], armour[i], built[i], registered[i], route[i])
             for i in range(n)]
    if render:
        images = render_images(rng, size, engines, shape, heading, color, striped, image_size, progress=progress)
    else:
        images = np.zeros((n, 3, image_size, image_size), dtype=np.uint8)
    return SpacecraftSample(frame, texts, images, latent, y, shares)


def _tabular_frame(rng, n, z1, z2, z3, mfr, size) -> pd.DataFrame:
    """~40 columns: the drivers, columns correlated with them, and distractors."""
    e = lambda s=1.0: rng.standard_normal(n) * s  # noqa: E731 - local shorthand
    thrust = 900 + 150 * z1
    dry_mass = np.exp(4.0 + 0.35 * z2)
    fuel = 120 + 30 * z3
    hull_length = 30 + 20 * size + rng.uniform(0, 8, n)  # disjoint ranges: the class is exactly readable
    cols: dict[str, Any] = {
        # drivers
        "thrust_kn": thrust,
        "dry_mass_t": dry_mass,
        "fuel_capacity_t": fuel,
        "manufacturer": np.array(MANUFACTURERS)[mfr],
        "hull_length_m": hull_length,
        # correlated with drivers (no information beyond them)
        "max_speed_kms": 12 + 0.01 * thrust + e(0.8),
        "engine_temp_k": 2400 + 0.5 * thrust + e(60),
        "wet_mass_t": dry_mass + fuel,
        "cargo_volume_m3": 8 * dry_mass + e(40),
        "hull_width_m": 0.35 * hull_length + e(2.0),
        "crew_size": np.maximum(1, np.round(hull_length / 6 + e(2))).astype(int),
        "fuel_burn_rate": fuel / 40 + e(0.3),
        "thrust_to_mass": thrust / dry_mass,
    }
    # distractors: plausible columns with no relation to the target
    distractors = {
        "launch_year": rng.integers(2190, 2260, n),
        "registry_number": rng.integers(10000, 99999, n),
        "shield_rating": rng.gamma(3.0, 10.0, n),
        "sensor_range_km": rng.lognormal(6, 0.5, n),
        "captain_age": rng.integers(25, 70, n),
        "n_decks": rng.integers(1, 12, n),
        "hangar_bays": rng.integers(0, 6, n),
        "warp_rating": rng.uniform(1, 9, n),
        "hull_integrity_pct": rng.uniform(60, 100, n),
        "reactor_output_mw": rng.normal(500, 80, n),
        "life_support_days": rng.integers(30, 400, n),
        "comm_array_ghz": rng.uniform(2, 40, n),
        "cargo_pods": rng.integers(0, 20, n),
        "service_hours": rng.exponential(5000, n),
        "missions_flown": rng.poisson(12, n),
        "insurance_tier": rng.integers(1, 6, n),
        "docking_clamps": rng.integers(2, 9, n),
        "thermal_shielding": rng.uniform(0, 1, n),
        "antenna_count": rng.integers(1, 7, n),
        "paint_code": rng.choice(["PX-1", "PX-2", "QR-7", "ZT-3", "MK-9"], n),
        "home_port": rng.choice(["Luna", "Ceres", "Europa", "Callisto", "Phobos", "Io", "Triton"], n),
        "propulsion_type": rng.choice(["ion", "fusion", "chemical", "plasma"], n),
        "registry_status": rng.choice(["active", "reserve", "refit"], n),
        "flag": rng.choice(["terran", "martian", "belt", "jovian"], n),
        "hull_material": rng.choice(["titanium", "composite", "ceramic"], n),
        "navigation_ai": rng.choice(["mk1", "mk2", "mk3"], n),
        "last_inspection_days": rng.integers(0, 720, n),
    }
    cols.update(distractors)
    return pd.DataFrame(cols)


CAT_COLUMNS = ["manufacturer", "paint_code", "home_port", "propulsion_type", "registry_status", "flag",
               "hull_material", "navigation_ai"]


def _describe(name, color, striped, klass, armour, built, registered, route) -> str:
    color_word = list(COLORS)[color]
    stripe = "striped" if striped else "plain"
    rim = "outer" if route > 0 else "inner"
    return (f"the {NAMES[name]} , a {stripe} {color_word} {CLASS_WORDS[klass]} , {ARMOUR_PHRASES[armour]} , "
            f"built on {PLANETS[built]} and registered on {PLANETS[registered]} , bound for the {rim} rim .")


def render_images(rng, size, engines, shape, heading, color, striped, image_size=32, progress=False) -> np.ndarray:
    """Draw each ship: hull (shape, size class, colour, optional stripe), engines at the
    rear (count), nose to the left or right (heading), on a starfield."""
    n = len(size)
    s = image_size / 32.0
    S = image_size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    out = np.zeros((n, S, S, 3), dtype=np.uint8)
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    rows = range(n)
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="rendering spacecraft", leave=False)
    for i in rows:
        img = np.zeros((S, S, 3), dtype=np.float32)
        img += rng.uniform(0, 25)  # background brightness
        stars = rng.integers(0, S, size=(int(6 * s * s), 2))
        img[stars[:, 0], stars[:, 1]] = rng.uniform(90, 160)
        L = HULL_LENGTH_PX[size[i]] * s
        H = max(4.0 * s, 0.5 * L)
        cx = S / 2 + rng.uniform(-2, 2) * s
        cy = S / 2 + rng.uniform(-2, 2) * s
        # local coordinate along the heading: u>0 is the nose side
        u = (xx - cx) * heading[i]
        v = yy - cy
        if shape[i] == 0:  # wedge: triangle pointing to the nose
            hull = (u >= -L / 2) & (u <= L / 2) & (np.abs(v) <= (H / 2) * (L / 2 - u) / L + 0.5)
        elif shape[i] == 1:  # block
            hull = (np.abs(u) <= L / 2) & (np.abs(v) <= H / 2)
        else:  # saucer
            hull = (u / (L / 2)) ** 2 + (v / (H / 2)) ** 2 <= 1.0
        img[hull] = palette[color[i]]
        if striped[i]:
            img[hull & (np.abs(v) <= 0.75 * s)] = (30, 30, 30)
        # engines: a vertical column of bright squares behind the hull, 3 px apart
        k = engines[i]
        pitch, half = 3.0 * s, 1.0 * s
        ex = -L / 2 - 2.0 * s
        for j in range(k):
            ey = (j - (k - 1) / 2) * pitch
            eng = (np.abs(u - ex) <= half) & (np.abs(v - ey) <= half)
            img[eng] = (255, 150, 30)
        img += rng.normal(0, 6, size=img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out.transpose(0, 3, 1, 2).copy()


def oracle_prediction(latent: pd.DataFrame, shares: dict[str, float], modalities: set[str] | list[str],
                      present: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The Bayes-optimal prediction E[y | the given modalities] from the ground truth.
    With ``present`` masks, a part counts for a row only where a modality showing it is present."""
    mods = set(modalities)
    n = len(latent)
    pres = {m: (np.ones(n, bool) if present is None else np.asarray(present[m], bool)) if m in mods else np.zeros(n, bool)
            for m in MODALITIES}
    pred = np.zeros(n)
    for part, where in VISIBLE_IN.items():
        seen = np.zeros(n, bool)
        for m in where:
            seen |= pres[m]
        pred += seen * math.sqrt(shares[part]) * latent[f"part_{part}"].to_numpy()
    both = pres["text"] & pres["image"]
    pred += both * math.sqrt(shares["synergy"]) * latent["part_synergy"].to_numpy()
    return pred


# --------------------------------------------------------------------- loader
def load_spacecraft(n: int = 12000, seed: int = 0, image_size: int = 32, shares: dict[str, float] | None = None,
                    task: str = "regression", n_classes: int = 4, missing: dict[str, float] | None = None,
                    split_seed: int | None = None, val_frac: float = 0.15, test_frac: float = 0.15,
                    text_max_len: int = 32, n_rows: int | None = None, modalities: list[str] | None = None,
                    progress: bool = False) -> MultimodalDataset:
    """The embedded synthetic dataset (no download).

    task: ``regression`` (default, variance-1 target), ``cost`` (a positive,
    right-skewed "cost" = 1000·exp(0.6·y) for log-target / SMAPE work),
    ``binary`` (above the median) or ``multiclass`` (``n_classes`` quantile bins).
    missing: per-modality fraction of rows where that modality is absent
    (every row keeps at least one modality). ``n_rows`` is an alias of ``n`` used
    by the profiles; ``modalities`` keeps a subset.
    """
    if n_rows is not None:
        n = int(n_rows)
    sample = generate(n=n, seed=seed, image_size=image_size, shares=shares, progress=progress)
    return dataset_from_sample(sample, task=task, n_classes=n_classes, missing=missing,
                               split_seed=seed if split_seed is None else split_seed, val_frac=val_frac,
                               test_frac=test_frac, text_max_len=text_max_len, modalities=modalities, seed=seed)


def dataset_from_sample(sample: SpacecraftSample, task="regression", n_classes=4, missing=None, split_seed=0,
                        val_frac=0.15, test_frac=0.15, text_max_len=32, modalities=None, seed=0) -> MultimodalDataset:
    n = len(sample.y)
    splits = make_splits(n, split_seed, val_frac, test_frac)
    present = _presence(n, missing, seed)

    frame = sample.frame
    cat_cols = [c for c in frame.columns if c in CAT_COLUMNS]
    num_cols = [c for c in frame.columns if c not in CAT_COLUMNS]
    enc = TabularEncoder(num_cols, cat_cols).fit(frame, splits["train"], source="spacecraft")
    num, cat = enc.transform(frame, source="spacecraft")

    vocab = Vocab.build([sample.texts[i] for i in splits["train"]])
    tokens = vocab.encode(sample.texts, text_max_len)
    pixels = torch.from_numpy(sample.images)

    mods = {
        "tabular": Modality("tabular", "tabular", {"num": num, "cat": cat}, torch.from_numpy(present["tabular"]),
                            enc.info()),
        "text": Modality("text", "text", {"tokens": tokens}, torch.from_numpy(present["text"]),
                         {"vocab_size": len(vocab), "max_len": text_max_len, "vocab": vocab}),
        "image": Modality("image", "image", {"pixels": pixels}, torch.from_numpy(present["image"]),
                          {"size": sample.images.shape[-1]}),
    }
    for m in mods.values():
        absent = ~m.present
        if absent.any():
            for t in m.tensors.values():
                t[absent] = 0
    target, target_name, n_cls = _make_target(sample.y, task, n_classes)
    texts = [t if present["text"][i] else None for i, t in enumerate(sample.texts)]
    oracle_rows = oracle_prediction(sample.latent, sample.shares, MODALITIES, present)
    shares = sample.shares
    meta = {
        "shares": shares,
        "ceilings": ceilings_for(shares),
        "ceiling_with_missing": _r2(sample.y, oracle_rows) if missing else None,
        "latent": sample.latent,
        "y_continuous": sample.y,
        "tabular_frame": frame,
        "num_columns": num_cols,
        "cat_columns": cat_cols,
        "texts": texts,
        "raw_texts": sample.texts,
        "tabular_encoder": enc,
        "generator": {"n": n, "seed": seed, "image_size": int(sample.images.shape[-1])},
    }
    ds = MultimodalDataset("spacecraft", mods, target, "regression" if task in ("regression", "cost") else task,
                           splits, n_classes=n_cls, target_name=target_name, meta=meta)
    if modalities is not None:
        ds = ds.subset_modalities(list(modalities))
    return ds


def _presence(n: int, missing: dict[str, float] | None, seed: int) -> dict[str, np.ndarray]:
    present = {m: np.ones(n, bool) for m in MODALITIES}
    if not missing:
        return present
    unknown = set(missing) - set(MODALITIES)
    if unknown:
        raise MMLibError(f"spacecraft: missing rates given for unknown modality {sorted(unknown)}; use {MODALITIES}.")
    rng = np.random.default_rng([seed, 7])
    for m, rate in missing.items():
        if not 0 <= rate < 1:
            raise MMLibError(f"spacecraft: missing rate for {m!r} must be in [0, 1), got {rate}.")
        present[m] = rng.random(n) >= rate
    none = ~(present["tabular"] | present["text"] | present["image"])
    present["tabular"][none] = True  # every row keeps at least one modality
    return present


def quantile_classes(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Class 0 … n_classes−1 of each value: its bin among ``n_classes`` equal-share quantile bins of ``y``."""
    edges = np.quantile(y, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(y, edges).astype(np.int64)


def _make_target(y: np.ndarray, task: str, n_classes: int):
    if task == "regression":
        return torch.from_numpy(y.astype(np.float32)), "target", None
    if task == "cost":
        return torch.from_numpy((1000.0 * np.exp(0.6 * y)).astype(np.float32)), "cost", None
    if task == "binary":
        return torch.from_numpy((y > np.median(y)).astype(np.int64)), "target_above_median", 2
    if task == "multiclass":
        if n_classes < 2:
            raise MMLibError(f"spacecraft: n_classes must be >= 2, got {n_classes}.")
        return torch.from_numpy(quantile_classes(y, n_classes)), f"target_bin{n_classes}", n_classes
    raise MMLibError(f"spacecraft: unknown task {task!r}; use 'regression', 'cost', 'binary' or 'multiclass'.")


def _r2(y, p) -> float:
    return float(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


# ------------------------------------------------------------- seed-000 layout
def write_folder(sample_or_dataset, path: str | Path, csv_name: str = "candidates_data.csv",
                 image_dir: str = "spacecraft_images") -> Path:
    """Write the dataset in the seed-000 layout: a CSV (tabular columns, ``description``,
    ``image_path``, ``target``) and a folder of PNG images. Returns the CSV path."""
    from PIL import Image

    from mmlib.utils import atomic_write_text

    sample = sample_or_dataset
    if isinstance(sample_or_dataset, MultimodalDataset):
        raise MMLibError("write_folder takes the output of spacecraft.generate(...), which keeps the raw images.")
    path = Path(path)
    (path / image_dir).mkdir(parents=True, exist_ok=True)
    frame = sample.frame.copy()
    frame.insert(0, "id", np.arange(len(frame)))
    frame["description"] = sample.texts
    frame["image_path"] = [f"{image_dir}/{i:06d}.png" for i in range(len(frame))]
    frame["target"] = sample.y
    for i, img in enumerate(sample.images):
        Image.fromarray(img.transpose(1, 2, 0)).save(path / frame["image_path"].iloc[i])
    csv_path = path / csv_name
    atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.17g"))
    return csv_path


def export_folder(out_dir: str | Path, n_rows: int = 12000, **kwargs) -> Path:
    """Write spacecraft as a CSV + PNG folder + spec file; returns the spec (``mmlib.data.export``)."""
    from mmlib.data.export import export_spacecraft
    return export_spacecraft(out_dir, n_rows=n_rows, **kwargs)
