"""python -m mmlib.fit, and the same under torchrun with 2 processes (DDP, gloo, CPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmlib.training import fit
from mmlib.reporting.records import read_records_file
from mmlib.training.distributed import DistContext

# a small spacecraft; tabular + text without modality dropout: no BatchNorm and no random masks,
# so two ranks' averaged shard gradients are the global batch's gradient and the runs must agree
ARGS = ["--dataset", "spacecraft", "--fusion", "early", "--modalities", "tabular", "text", "--seed", "0",
        "--profile", "smoke", "-p", "n_rows=1200", "-p", "epochs=3", "-p", "batch_size=64",
        "-p", "max_batches_per_epoch=None", "-m", "modality_dropout=0.0", "--device", "cpu"]
RECORD = "spacecraft/fit_early_tabular+text_seed0.results.json"


def _record(out: Path) -> dict:
    files = sorted(out.rglob("*.results.json"))
    assert [f.relative_to(out).as_posix() for f in files] == [RECORD]  # one record file, written once
    (rec,) = read_records_file(files[0])
    return rec


def test_torchrun_two_processes_match_one_process(tmp_path, one_thread, capsys):
    assert fit.main([*ARGS, "--out-dir", str(tmp_path / "one")]) == 0
    printed = capsys.readouterr().out
    one = _record(tmp_path / "one")
    assert "test_r2" in printed and one["extra"]["distributed"] == {"world_size": 1}

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMLIB_RUN_CACHE": "0"}
    ckpt = tmp_path / "ddp.ckpt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mmlib.fit", *ARGS, "--out-dir", str(tmp_path / "ddp"), "--checkpoint", str(ckpt)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = _record(tmp_path / "ddp")
    assert ddp["extra"]["distributed"] == {"world_size": 2, "backend": "gloo", "rank_batch_rows": 32}
    assert ckpt.is_file()  # rank 0 wrote the checkpoint
    assert proc.stdout.count("test_r2") == 1  # only rank 0 reports
    assert ddp["epochs"] == one["epochs"] == 3
    tests = [k for k in one["metrics"] if k.startswith("test_") and "_recovered_" not in k]
    assert "test_r2" in tests
    assert abs(ddp["metrics"]["test_r2"] - one["metrics"]["test_r2"]) <= 0.02
    assert one["metrics"]["test_r2"] > 0.2  # both actually learned something


def _ctx(rank: int, world: int) -> DistContext:
    ctx = DistContext.__new__(DistContext)
    ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, ctx.shard_rows = rank, world, rank, "gloo", 0
    return ctx


@pytest.mark.parametrize("n,world", [(64, 2), (9, 2), (10, 3), (1, 2)])
def test_shards_partition_each_global_batch(n, world):
    import torch

    batch = {"inputs": {"tabular": {"num": torch.arange(n * 2).view(n, 2)}}, "present": {"tabular": torch.ones(n)},
             "y": torch.arange(n), "idx": torch.arange(n)}
    shards = [_ctx(r, world).shard(batch)["idx"].tolist() for r in range(world)]
    assert all(shards)  # every rank takes a step
    if n >= world:  # disjoint, contiguous, and together the whole batch
        assert sum(shards, []) == list(range(n))
    else:
        assert set(sum(shards, [])) <= set(range(n))
    assert _ctx(0, world).shard(batch)["inputs"]["tabular"]["num"].shape[0] == len(shards[0])
