"""The two training loops the bench times on the same module and batches: ReconModule.fit through
the Lightning Trainer, and the same maths in a plain PyTorch loop.

Every step is timed from its start to the next one's (a full period: data loading, host-to-device
copy, forward, backward, clipping, optimizer and, under Lightning, all of its bookkeeping between
steps); the first `warmup` steps are not timed, and one last step runs untimed to close the window.
On CUDA each timestamp follows a torch.cuda.synchronize().
"""

from __future__ import annotations

import contextlib
import time

import torch

from recon_ft.experiments.bench.batches import make_loader, to_device
from recon_ft.method.objective import LossConfig, compute_losses
from recon_ft.training.allocator import retain_step_memory

PRECISIONS = ("32", "bf16-mixed", "16-mixed")


def lightning_precision(precision: str) -> str:
    return "32-true" if precision == "32" else precision


def autocast(device: torch.device, precision: str):
    """The forward context Lightning's MixedPrecision plugin uses."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def step_rng(module, batch_number: int) -> torch.Generator | None:
    """The generator ReconModule.training_step draws batch `batch_number`'s timesteps and noise
    from; None (the global RNG) for a module without one."""
    return module.step_rng(batch_number) if hasattr(module, "step_rng") else None


def run_plain(
    module,
    batches: list[dict],
    loss_cfg: LossConfig,
    *,
    steps: int,
    warmup: int,
    device: torch.device,
    precision: str = "32",
    accumulate: int = 1,
    seed: int = 0,
) -> list[float]:
    """The plain PyTorch loop; per-step periods (s) of steps warmup..warmup+steps-1.

    Exactly the maths of ReconModule under Lightning's automatic optimization: the module's own
    optimizer, scheduler and per-model clipping; autocast around the forward only; for 16-mixed a
    GradScaler, unscaled before clipping. It runs warmup + steps + 1 steps, the last untimed.
    """
    module.to(device)  # train/eval modes stay as the caller set them, as under Lightning 2.6's fit
    if device.type == "cpu":
        retain_step_memory()  # the host heap settings ReconModule's fit makes (on_fit_start)
    conf = module.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    optimizer.zero_grad(set_to_none=True)  # nothing left over from an earlier run
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    total = warmup + steps + 1
    stamps: list[float] = []
    for i, batch in enumerate(make_loader(batches, total)):
        if i == 0:  # where the Lightning run seeds too: right before the first step
            torch.manual_seed(seed)
        if warmup <= i <= warmup + steps:
            stamps.append(now(device))
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = compute_losses(
                module.captioner, module.generator, module.bridge, batch, loss_cfg, i, rng=step_rng(module, i),
                cache=getattr(module, "frozen_cache", None),
            )
        # ReconModule.training_step's non-finite guard reads the loss on the host each step (a
        # device sync on a GPU); the plain loop does the same so that (c)/(d) is Lightning's cost.
        if not bool(torch.isfinite(out["loss"].detach()).item()):
            optimizer.zero_grad(set_to_none=True)  # the module skips such a step
            continue
        loss = out["loss"] / accumulate
        (scaler.scale(loss) if scaler else loss).backward()
        if (i + 1) % accumulate == 0:
            if scaler:
                scaler.unscale_(optimizer)
            module.configure_gradient_clipping(optimizer)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    optimizer.zero_grad(set_to_none=True)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def _timer_callback(warmup: int, steps: int, device: torch.device, seed: int):
    import lightning as L

    class StepTimer(L.Callback):
        """Seeds the global RNG right before the first step; stamps each timed step's start."""

        def __init__(self):
            self.stamps: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                torch.manual_seed(seed)
            if warmup <= batch_idx <= warmup + steps:
                self.stamps.append(now(device))

    return StepTimer()


def run_lightning(
    module,
    batches: list[dict],
    *,
    steps: int,
    warmup: int,
    device: torch.device,
    precision: str = "32",
    seed: int = 0,
) -> list[float]:
    """ReconModule.fit for warmup + steps + 1 steps, no logger, checkpointing or progress bar."""
    import lightning as L

    timer = _timer_callback(warmup, steps, device, seed)
    total = warmup + steps + 1
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=lightning_precision(precision),
        max_steps=total,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=make_loader(batches, total))
    module.trainer = None  # detach the finished trainer (configure_optimizers asks it for the step count)
    module.zero_grad(set_to_none=True)  # Lightning leaves the last step's gradients
    module.to(device)  # Lightning's teardown moved the module to the CPU
    return [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]
