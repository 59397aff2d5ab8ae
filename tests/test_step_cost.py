"""What one training step costs besides its maths: host reads of device values (each a sync on a
GPU) and, on the CPU, page faults of memory the previous step freed (recon_ft/training/allocator.py).
docs/performance.md lists both."""

from __future__ import annotations

import collections
import resource
import sys
import traceback

import lightning as L
import pytest
import torch

from recon_ft.experiments.bench.batches import fake_batches, make_loader
from recon_ft.experiments.bench.models import build_module
from recon_ft.experiments.bench.settings import size_preset
from recon_ft.method.objective import LossConfig
from recon_ft.training import allocator

STEPS, PROBED = 8, 3  # the batch probed is past the first steps (optimizer state, heap growth)


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return build_module(size_preset("tiny")).train()


def fit(module, callback, steps: int = STEPS) -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[callback],
    )  # fmt: skip
    batches = fake_batches(module.captioner, module.generator, 8)
    trainer.fit(module, train_dataloaders=make_loader(batches, steps))
    module.trainer = None


# Python's ways of reading a tensor's values on the host (torch.nonzero and boolean masks: the
# result's size is read).
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero")


class HostReads(L.Callback):
    """Where the probed step reads tensor values on the host, outside torch.optim (AdamW reads its
    own step counters, CPU tensors even when the model is on a GPU)."""

    def __init__(self):
        self.reads: collections.Counter = collections.Counter()
        self.active = False

    def record(self, what: str) -> None:
        if not self.active:
            return
        stack = traceback.extract_stack()[:-2]  # up to the caller of the read
        if "torch/optim/" in stack[-1].filename:
            return
        frame = next((f for f in reversed(stack) if "recon_ft" in f.filename), stack[-1])
        self.reads[f"{what} in {frame.name}"] += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active = batch_idx == PROBED

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.active = False


@pytest.fixture
def host_reads(monkeypatch):
    probe = HostReads()

    def counting(name, orig):
        def read(self, *args, **kwargs):
            probe.record(name)
            return orig(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    nonzero = torch.nonzero
    monkeypatch.setattr(torch, "nonzero", lambda x, *a, **k: (probe.record("nonzero"), nonzero(x, *a, **k))[1])
    getitem = torch.Tensor.__getitem__

    def index(self, idx):
        if any(torch.is_tensor(i) and i.dtype == torch.bool for i in (idx if isinstance(idx, tuple) else (idx,))):
            probe.record("boolean mask")
        return getitem(self, idx)

    monkeypatch.setattr(torch.Tensor, "__getitem__", index)
    return probe


@pytest.mark.parametrize("t_max", [None, 700])
def test_a_training_step_reads_device_values_only_for_the_guards(module, host_reads, t_max):
    """The non-finite loss guard and the non-finite gradient guard read one value each; t_max's row
    selection reads the qualifying rows' indices once (their number sets the shapes that follow)."""
    cfg = module.loss_cfg
    module.loss_cfg = LossConfig(**{**cfg.__dict__, "t_max": t_max})
    try:
        fit(module, host_reads)
    finally:
        module.loss_cfg = cfg
    expected = {
        "item in _guard_nonfinite": 1,  # is the loss finite (on every rank)
        "item in _grads_finite": 1,  # are all gradients finite (the per-tensor checks stacked first)
    }
    if t_max:
        expected["nonzero in compute_losses"] = 1  # the rows with t < t_max
    assert dict(host_reads.reads) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap and ru_minflt")
def test_cpu_steps_keep_their_memory_mapped(module):
    """The heap a step frees is reused by the next step rather than returned to the kernel and
    faulted in again (about 16,000-25,000 faults a step at this size before; ~1 now)."""

    class Faults(L.Callback):
        def __init__(self):
            self.at: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.at.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    probe = Faults()
    fit(module, probe)
    if not allocator.retain_step_memory():
        pytest.skip("not glibc")
    per_step = [b - a for a, b in zip(probe.at[PROBED:], probe.at[PROBED + 1 :])]
    # The median step: a single step may fault in something new (a logger's first write, a lazily
    # grown buffer); the working set faulted in every step would show in every one.
    assert sorted(per_step)[len(per_step) // 2] < 1000, per_step
