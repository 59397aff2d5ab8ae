"""DDP on 2 CPU processes (gloo): disjoint data shards, adapters written once, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "trainer=ddp_cpu",
    "data.train.size=32",
    "data.val.size=8",
    "data.batch_size=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "+callbacks.record._target_=tests.test_ddp.RecordSamples",
]


class RecordSamples(L.Callback):
    """Appends the ids each rank trains on, and the first timesteps and noise values its step draws,
    to <run_dir>/ids_rank<r>.jsonl."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        path = Path(trainer.default_root_dir) / f"ids_rank{trainer.global_rank}.jsonl"
        rng = module.step_rng()
        noise = torch.randint(0, 1000, (2,), generator=rng).tolist() + torch.randn(2, generator=rng).tolist()
        with path.open("a") as f:
            f.write(json.dumps({"step": trainer.global_step, "ids": [str(i) for i in batch["id"]], "noise": noise})
                    + "\n")


def run_train(run_dir: Path, *overrides: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *COMMON, *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_ids(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / f"ids_rank{rank}.jsonl").read_text().splitlines()]


def test_ddp_two_cpu_processes_train_shard_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_train(run_dir, "trainer.max_steps=4")
    rank0, rank1 = read_ids(run_dir, 0), read_ids(run_dir, 1)
    assert len(rank0) == len(rank1) == 4
    for a, b in zip(rank0, rank1):
        assert not set(a["ids"]) & set(b["ids"])  # each rank sees its own shard
    noises = [tuple(r["noise"]) for r in rank0 + rank1]
    assert len(set(noises)) == 8  # every (step, rank) draws its own timesteps and noise
    seen = [i for row in rank0 + rank1 for i in row["ids"]]
    assert len(seen) == len(set(seen)) == 32  # 4 steps x 2 ranks x 4 = one epoch, each item once

    # Adapters and base written once, by rank zero, in the loadable formats.
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == ["captioner", "generator"]
    assert (run_dir / "adapters/generator/pytorch_lora_weights.safetensors").exists()
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4

    # Resume from step 2 to step 4 in a new run: the same samples, rank by rank, as the first run.
    resumed = tmp_path / "resumed"
    run_train(resumed, "trainer.max_steps=4", f"ckpt_path={run_dir}/checkpoints/step000002.ckpt")
    for rank, first in ((0, rank0), (1, rank1)):
        again = read_ids(resumed, rank)
        assert [r["step"] for r in again] == [2, 3]
        assert [r["ids"] for r in again] == [r["ids"] for r in first[2:]]
        assert [r["noise"] for r in again] == [r["noise"] for r in first[2:]]
    resumed_ckpt = torch.load(resumed / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert resumed_ckpt["global_step"] == 4
    for name, value in ckpt["state_dict"].items():
        torch.testing.assert_close(resumed_ckpt["state_dict"][name], value, rtol=1e-5, atol=1e-6)
