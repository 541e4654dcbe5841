"""Train one configuration from the command line; under ``torchrun``, on many devices with DDP.

    python -m mmlib.fit --dataset spacecraft --fusion early --seed 0 --profile standard
    torchrun --nproc_per_node 4 -m mmlib.fit --dataset spacecraft --fusion early --seed 0 --profile full
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m mmlib.fit --dataset spacecraft --fusion attention --profile full

It trains through the same ``run_fusion`` / ``Trainer`` as the notebooks, prints the test
metrics and writes the record (with its test predictions) to
``<out-dir>/<dataset>/fit_<fusion>_<modalities>_seed<seed>.results.json``. Under ``torchrun``
(``WORLD_SIZE`` > 1) the ranks join one process group (``nccl`` on GPUs, ``gloo`` on CPU;
``--backend`` overrides) and ``mmlib.training.distributed`` takes over: ``batch_size`` is the
global batch, each rank trains on its shard, rank 0 writes the checkpoint and the record.
A DDP run neither reads nor writes the run cache.
Exit codes: 0 ok, 2 bad usage or a training error (one ``error: …`` line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from mmlib.config import DATA_CACHE
from mmlib.utils import MMLibError

DEFAULT_OUT = DATA_CACHE / "fit"


def build_parser() -> argparse.ArgumentParser:
    from mmlib.training.profiles import profile_names

    ap = argparse.ArgumentParser(prog="python -m mmlib.fit", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="spacecraft", help="registered dataset name (default: %(default)s)")
    ap.add_argument("--fusion", default="early", help="a key of mmlib.models.FUSIONS (default: %(default)s)")
    ap.add_argument("--modalities", nargs="+", default=None, metavar="M", help="model inputs (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    ap.add_argument("--profile", choices=profile_names(), default="standard", help="run size (default: %(default)s)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile key, e.g. -p epochs=3 -p n_rows=2000 -p batch_size=128 (repeatable)")
    ap.add_argument("-m", "--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="argument of build_model, e.g. -m modality_dropout=0.0 (repeatable)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun with nccl: each rank's GPU)")
    ap.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                    help="process-group backend under torchrun (default: nccl with GPUs, else gloo)")
    ap.add_argument("--checkpoint", default=None, metavar="PATH", help="write a resumable checkpoint every epoch")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="records root (default: %(default)s)")
    return ap


def _kv(items: Sequence[str], what: str) -> dict[str, Any]:
    from mmlib.reporting.notebooks import parse_param

    try:
        return dict(parse_param(item) for item in items)
    except MMLibError as exc:
        raise MMLibError(f"{what}: {exc}") from exc


def fit(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train the configuration of ``args``; the record on rank 0 (None on the other ranks)."""
    from mmlib.data import load_for_profile
    from mmlib.reporting.records import RecordWriter
    from mmlib.training import distributed
    from mmlib.training.experiments import add_record, run_fusion
    from mmlib.training.profiles import get_profile

    overrides = _kv(args.param, "--param")
    if "seeds" in overrides:
        raise MMLibError("--param seeds=...: python -m mmlib.fit trains one seed; use --seed.")
    P = get_profile(args.profile, **overrides)
    ctx = distributed.init_from_env(args.backend)
    try:
        ds = load_for_profile(args.dataset, P)
        mods = list(args.modalities) if args.modalities else list(ds.modality_names)
        name = f"fit_{args.fusion}_{'+'.join(sorted(mods))}_seed{args.seed}"
        main = ctx is None or ctx.is_main
        writer = RecordWriter(name, args.dataset, args.out_dir, profile=P, data=ds) if main else None
        train_kwargs: dict[str, Any] = {}
        if args.checkpoint:
            train_kwargs.update(checkpoint_path=args.checkpoint, resume=bool(args.resume))
        world = {"world_size": 1} if ctx is None else {"world_size": ctx.world_size, "backend": ctx.backend}
        run = run_fusion(ds, args.fusion, mods, args.seed, P, notebook=name, experiment="fit",
                         model_kwargs=_kv(args.model_kwarg, "--model-kwarg"), train_kwargs=train_kwargs,
                         device=distributed.device_for(ctx, args.device), writer=None, progress=False,
                         extra={"distributed": world})
        if ctx is not None:  # the most rows of one rank's shard, measured while training
            run.fields["extra"]["distributed"]["rank_batch_rows"] = ctx.shard_rows
            ctx.barrier()
        if writer is None:
            return None
        rec = add_record(run.fields, writer=writer, notebook=name, dataset=args.dataset,
                         predictions=run.test_predictions, y_test=ds.target[ds.splits["test"]].numpy())
        path = writer.save()
        print(f"{args.dataset} · {args.fusion} · {'+'.join(sorted(mods))} · seed {args.seed} · profile "
              f"{args.profile} · {world['world_size']} process(es) · {rec['epochs']} epochs in "
              f"{rec['train_time_s']:.1f} s on {rec['device']}")
        for k, v in rec["metrics"].items():
            if k.startswith("test_") and "_recovered_" not in k:
                print(f"  {k:<16} {v:.4f}")
        print(f"record: {path}")
        return rec
    finally:
        distributed.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fit(args)
    except MMLibError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
