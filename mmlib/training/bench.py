"""Training throughput: the in-memory tensor pipeline vs a naive per-item loader.

``python -m mmlib.bench`` writes a spacecraft sample in the seed-000 layout (CSV +
PNG folder), then trains the same early-fusion model for the same number of
steps twice on the same machine:

- naive: a ``torch.utils.data.Dataset`` whose ``__getitem__`` reads the table row,
  tokenises the text and opens + decodes the PNG with Pillow, batched by a
  ``DataLoader`` (the seed-000 way);
- in-memory: ``MultimodalDataset.batches`` indexing tensors that were built once
  (images already decoded into a uint8 tensor, on the GPU when there is one).

It prints samples/s for both and their ratio, measured in one run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmlib.data.folder import load_folder
from mmlib.data.spacecraft import generate, write_folder
from mmlib.utils import resolve_device, set_seeds


class NaivePerItemDataset(torch.utils.data.Dataset):
    """Per-item work on every access, as a straightforward PyTorch pipeline does."""

    def __init__(self, csv_path: Path, reference, rows: np.ndarray):
        from torchvision.transforms import functional as TF  # noqa: F401 - imported to mirror a typical pipeline

        self.frame = pd.read_csv(csv_path)
        self.root = csv_path.parent
        self.rows = rows
        self.enc = reference.meta["tabular_encoder"]
        self.vocab = reference.modalities["text"].info["vocab"]
        self.max_len = reference.modalities["text"].info["max_len"]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        row = self.frame.iloc[[self.rows[i]]]
        num, cat = self.enc.transform(row, source="bench")
        tokens = self.vocab.encode([row["description"].iloc[0]], self.max_len)[0]
        with Image.open(self.root / row["image_path"].iloc[0]) as im:
            pixels = pil_to_tensor(im.convert("RGB"))
        y = torch.tensor(float(row["target"].iloc[0]), dtype=torch.float32)
        return num[0], cat[0], tokens, pixels, y


def _train_steps(model, batches, device, steps: int) -> tuple[float, int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seen, done = 0, 0
    start = time.perf_counter()
    for inputs, present, y in batches:
        out = model(inputs, present)
        loss = torch.nn.functional.mse_loss(out["pred"].squeeze(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        done += 1
        if done >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, seen


def run_benchmark(n: int = 4000, batch_size: int = 256, steps: int = 12, workers: int = 0, device: str = "auto",
                  seed: int = 0) -> dict:
    from mmlib.models import build_model

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        sample = generate(n=n, seed=seed)
        csv = write_folder(sample, tmp)
        ds = load_folder(csv, target="target", text_column="description", image_column="image_path", seed=seed,
                         cache=False)
        ds = ds.to(dev)
        train = ds.splits["train"]
        steps = min(steps, len(train) // batch_size)

        def in_memory():
            g = torch.Generator().manual_seed(seed)
            for b in ds.batches("train", batch_size, shuffle=True, generator=g, drop_last=True):
                yield b["inputs"], b["present"], b["y"]

        naive_ds = NaivePerItemDataset(csv, ds, train)
        loader = torch.utils.data.DataLoader(naive_ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             drop_last=True)

        def naive():
            ones = torch.ones(batch_size, dtype=torch.bool, device=dev)
            for num, cat, tokens, pixels, y in loader:
                inputs = {"tabular": {"num": num.to(dev), "cat": cat.to(dev)}, "text": {"tokens": tokens.to(dev)},
                          "image": {"pixels": pixels.to(dev)}}
                yield inputs, {m: ones for m in inputs}, y.to(dev)

        results = {}
        for name, source in (("naive_per_item", naive), ("in_memory", in_memory)):
            set_seeds(seed)
            model = build_model(ds, fusion="early").to(dev)
            _train_steps(model, source(), dev, 1)  # warm-up (allocations, kernels)
            set_seeds(seed)
            model = build_model(ds, fusion="early").to(dev)
            secs, seen = _train_steps(model, source(), dev, steps)
            results[name] = {"seconds": round(secs, 3), "samples": seen, "samples_per_s": round(seen / secs, 1)}
    ratio = results["in_memory"]["samples_per_s"] / results["naive_per_item"]["samples_per_s"]
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "n": n,
        "batch_size": batch_size,
        "steps": steps,
        "dataloader_workers": workers,
        **results,
        "ratio_in_memory_over_naive": round(ratio, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmlib.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000, help="rows written to the PNG folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=12, help="training steps timed per pipeline")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the naive pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    res = run_benchmark(args.n, args.batch_size, args.steps, args.workers, args.device)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"device={res['device']} threads={res['threads']} batch={res['batch_size']} steps={res['steps']} "
              f"workers={res['dataloader_workers']}")
        for k in ("naive_per_item", "in_memory"):
            print(f"  {k:15s} {res[k]['samples_per_s']:10.1f} samples/s  ({res[k]['samples']} samples in "
                  f"{res[k]['seconds']:.2f} s)")
        print(f"  ratio in-memory / naive: {res['ratio_in_memory_over_naive']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
