"""Throughput and memory of the joint objective: `python -m recon_ft.experiments.bench --size tiny|real`.

One process builds one captioner + generator pair and measures, on the same models and batches:

  gen_step         (a) a generator-only step: L_gen (plain loop)
  cap_step         (b) a captioner-only step: L_cap (plain loop)
  joint_lightning  (c) the joint step, all four terms, through the Lightning Trainer (ReconModule.fit)
  joint_plain      (d) the same maths in a plain loop: compute_losses, the module's non-finite
                       check, backward, its per-model clipping, AdamW step, LR scheduler step,
                       zero_grad (test_bench checks that (c) and (d) make the same updates)
  reference        (e) the reference implementation's schedule: batch 1, one direction per step
                       (even: L_gen + L_t2i2t, odd: L_cap + L_i2t2i), gradient accumulation 8
  joint_plain_cached   (d) with the VAE posteriors and text-encoder states read from a full
                       FrozenCache (the `frozen_cache` option from the second epoch on)

and the joint step's time per loss term, with the VAE decoder and with the tiny (TAESD) decoder.

Timing. Every step is timed from one step's start to the next one's (a full period: data loading,
host-to-device copy, forward, backward, clipping, optimizer and, for (c), all of Lightning's
bookkeeping between steps); the first `--warmup` steps are not timed, and one last step runs
untimed to close the window. On CUDA each timestamp follows a torch.cuda.synchronize(). (c), (d),
(e) and (d) cached run in rounds (`--rounds`), every other round in reverse order, so that drift
of the machine hits them alike. Ratios come from mean step times, from medians (robust to bursts
of other load on a shared machine) and, for the phases run in rounds, as the median over rounds of
each round's ratio ("paired").
On a CPU of 2 cores or fewer one thread is used unless `--threads` says otherwise (setup_runtime).

Memory. CUDA: torch.cuda.max_memory_allocated() over the phase (tensors, weights included), and
its rise over the phase start. CPU: the kernel's peak resident set size (VmHWM), reset at the
phase start by writing 5 to /proc/self/clear_refs, after gc and malloc_trim(0); the rise over the
resident size at the start is reported (it includes allocator slack, as RSS does). Where the reset
is not allowed, a thread samples VmRSS every 2 ms instead (the method is written into the JSON).

Share of the joint step per term (plain loop, mean step times): L_cap = (b), the captioner pass it
shares with L_i2t2i; L_gen = (a), the VAE encoding, text encoder and denoiser pass it shares with
both cycles; each cycle term = (d) minus (d) without that term, i.e. what the term adds to the joint
step (its extra passes and their backward). What is left ("rest") is (d) minus those four: the
second optimizer step counted by (a) and (b) makes it slightly negative; noise moves it too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from recon_ft.method.frozen_cache import FrozenCache
from recon_ft.method.objective import LossConfig, compute_losses
from recon_ft.zoo.recipe import RECIPES

# -- what is measured ------------------------------------------------------------------------------

# The adapters of conf/captioner/blip_base.yaml and conf/generator/sd_v1_5.yaml, without dropout
# (dropout would draw random numbers and make (c) and (d) differ).
CAPTIONER_ADAPTER = {"mode": "lora", "r": 16, "alpha": 16, "target_modules": r".*text_decoder.*\.(query|key|value)"}
UNET_ADAPTER = {"mode": "lora", "r": 8, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
# The reference implementation's optimization (DESIGN.md section 3).
OPTIM = {
    "captioner": {"lr": 1e-4, "weight_decay": 0.0, "grad_clip": None},
    "generator": {"lr": 1e-4, "weight_decay": 1e-2, "grad_clip": 1.0},
    "schedule": "constant",
}
JOINT = LossConfig()  # all four terms every step (conf/loss/joint.yaml)
REFERENCE = LossConfig(schedule="alternate", lambda_img=1.0, lambda_txt=1.0)
REFERENCE_BATCH, REFERENCE_ACCUMULATION = 1, 8
MEMORY_LIMIT_GB = 40.0


@dataclass
class SizePreset:
    captioner: dict
    generator: dict
    steps: int
    warmup: int
    precision: str
    gradient_checkpointing: bool


SIZES = {
    "tiny": SizePreset(
        captioner={"tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2}},
        generator={"tiny": {"sample_size": 32, "cross_attention_dim": 32}},
        steps=16,
        warmup=2,
        precision="32",
        gradient_checkpointing=False,
    ),
    # The synthetic zoo's architectures (recon_ft.zoo, default recipe), random weights: what the
    # default run trains.
    "zoo": SizePreset(
        captioner={"tiny": RECIPES["default"].captioner_sizes()},
        generator={"tiny": RECIPES["default"].generator_sizes()},
        steps=16,
        warmup=2,
        precision="32",
        gradient_checkpointing=False,
    ),
    # Stable Diffusion v1.5 at 512 px + BLIP base at 384 px, random weights (recon_ft.models.arch).
    "real": SizePreset(
        captioner={"arch": "blip_base"},
        generator={"arch": "sd15"},
        steps=10,
        warmup=3,
        precision="bf16-mixed",
        gradient_checkpointing=True,
    ),
}

CAPTIONS = [
    "a small red circle",
    "a large blue square left of a green star",
    "a purple triangle above a yellow circle",
    "a star",
    "two small green squares right of a large red triangle",
    "a blue circle below an orange square",
    "a large yellow star",
    "a red square left of a small blue circle and a green triangle",
]


# -- data ------------------------------------------------------------------------------------------


def fake_batches(captioner, generator, batch_size: int, n: int = 4, seed: int = 0) -> list[dict]:
    """`n` distinct batches shaped like the datamodule's: both image views, captions, references, ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        images = torch.rand(batch_size, 3, generator.image_size, generator.image_size, generator=g) * 2 - 1
        captions = [CAPTIONS[(i * batch_size + j) % len(CAPTIONS)] for j in range(batch_size)]
        with torch.no_grad():
            image_cap = captioner.preprocess(images)
        out.append(
            {
                "image_gen": images,
                "image_cap": image_cap,
                "caption": captions,
                "references": [[c] for c in captions],
                "id": [f"{seed}-{i}-{j}" for j in range(batch_size)],
                "n_bad": 0,
            }
        )
    return out


class _Cycle(Dataset):
    """`length` items cycling through prebuilt batches (the loader does no collation)."""

    def __init__(self, batches: list[dict], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def make_loader(batches: list[dict], length: int) -> DataLoader:
    # Its own generator: creating the iterator draws a seed, and it must not come from the global
    # RNG, which draws the timesteps and noise of compute_losses.
    return DataLoader(
        _Cycle(batches, length),
        batch_size=None,
        shuffle=False,
        num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# -- clocks and memory -----------------------------------------------------------------------------


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory of one phase; see the module docstring for the methods."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._peak_kb = 0

    def __enter__(self) -> "MemoryProbe":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        self.base = (_proc_status_kb("VmRSS") or 0) * 1024
        if _reset_peak_rss() and _proc_status_kb("VmHWM") is not None:
            self.method = "peak RSS (VmHWM, reset via /proc/self/clear_refs)"
        else:
            self.method = "peak RSS (VmRSS sampled every 2 ms)"
            self._peak_kb = self.base // 1024
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak_kb = max(self._peak_kb, _proc_status_kb("VmRSS") or 0)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak = self._peak_kb * 1024
        else:
            self.peak = (_proc_status_kb("VmHWM") or 0) * 1024
        self.delta = max(0, self.peak - self.base)


# -- precision -------------------------------------------------------------------------------------

PRECISIONS = ("32", "bf16-mixed", "16-mixed")


def lightning_precision(precision: str) -> str:
    return "32-true" if precision == "32" else precision


def autocast(device: torch.device, precision: str):
    """The forward context Lightning's MixedPrecision plugin uses."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# -- the loops -------------------------------------------------------------------------------------


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


def step_rng(module, batch_number: int) -> torch.Generator | None:
    """The generator ReconModule.training_step draws batch `batch_number`'s timesteps and noise
    from; None (the global RNG) for a module without one."""
    return module.step_rng(batch_number) if hasattr(module, "step_rng") else None


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


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    description: str
    batch_size: int
    complete_per_sample: float | None  # share of a complete sample (all four terms) one sample gets
    periods: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)  # median step time of each run
    peak_bytes: int = 0
    delta_bytes: int = 0
    memory_method: str = ""
    error: str | None = None

    def summary(self) -> dict:
        if self.error:
            return {"description": self.description, "batch_size": self.batch_size, "error": self.error}
        mean = sum(self.periods) / len(self.periods)
        out = {
            "description": self.description,
            "batch_size": self.batch_size,
            "steps_timed": len(self.periods),
            "step_time_s": mean,
            "step_time_median_s": statistics.median(self.periods),
            "steps_per_s": 1.0 / mean,
            "samples_per_s": self.batch_size / mean,
            "peak_memory_bytes": self.peak_bytes,
            "peak_memory_delta_bytes": self.delta_bytes,
            "round_median_step_time_s": self.round_medians,
        }
        if self.complete_per_sample is not None:
            out["complete_samples_per_s"] = self.batch_size * self.complete_per_sample / mean
        return out


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure(phase: Phase, device: torch.device, fn) -> Phase:
    """Run `fn` (-> periods) under a memory probe; add its periods and peak memory to `phase`."""
    try:
        with MemoryProbe(device) as probe:
            periods = fn()
    except Exception as exc:  # out of memory at real size is a result, not a crash
        if not _is_oom(exc):
            raise
        phase.error = f"out of memory: {str(exc).splitlines()[0][:200]}"
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return phase
    phase.periods += periods
    if periods:
        phase.round_medians.append(statistics.median(periods))
    phase.peak_bytes = max(phase.peak_bytes, probe.peak)
    phase.delta_bytes = max(phase.delta_bytes, probe.delta)
    phase.memory_method = probe.method
    return phase


# -- the benchmark ---------------------------------------------------------------------------------


def build_module(size: SizePreset, gradient_checkpointing: bool = False, init_seed: int = 0):
    from recon_ft.models.captioner import build_blip
    from recon_ft.models.generator import build_stable_diffusion
    from recon_ft.training.module import ReconModule

    captioner = build_blip(adapter=CAPTIONER_ADAPTER, init_seed=init_seed, **size.captioner)
    generator = build_stable_diffusion(unet_adapter=UNET_ADAPTER, init_seed=init_seed, **size.generator)
    if gradient_checkpointing:
        captioner.enable_gradient_checkpointing()
        generator.enable_gradient_checkpointing()
    return ReconModule(captioner, generator, loss=JOINT, optim=OPTIM)


def _set_cycle_decoder(module, kind: str, device: torch.device, gradient_checkpointing: bool, cache: dict) -> None:
    from recon_ft.models.generator import build_cycle_decoder

    generator = module.generator
    if kind == "full":
        generator.cycle_decoder = None
        return
    if "tiny" not in cache:
        cache["tiny"] = build_cycle_decoder("tiny", generator.vae).to(device)
    generator.cycle_decoder = cache["tiny"]
    if gradient_checkpointing:
        generator.enable_gradient_checkpointing()


def _only(**weights) -> LossConfig:
    base = dict(w_cap=0.0, w_gen=0.0, lambda_img=0.0, lambda_txt=0.0)
    return replace(JOINT, **{**base, **weights})


def run_benchmark(
    size: str = "tiny",
    batch_size: int = 8,
    steps: int | None = None,
    warmup: int | None = None,
    device: str = "auto",
    precision: str | None = None,
    rounds: int = 3,
    gradient_checkpointing: bool | None = None,
    seed: int = 0,
    threads: int | None = None,
    log=print,
) -> dict:
    """Every measurement of the module docstring, on one model pair; the JSON-ready result."""
    preset = SIZES[size]
    steps = preset.steps if steps is None else steps
    warmup = preset.warmup if warmup is None else warmup
    precision = precision or preset.precision
    ckpt = preset.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if precision == "16-mixed" and dev.type != "cuda":
        raise ValueError("16-mixed needs a GPU; use bf16-mixed on a CPU")
    threads, busy = setup_runtime(dev, threads)

    t0 = time.perf_counter()
    log(f"building the {size} models (gradient checkpointing {'on' if ckpt else 'off'}) ...")
    module = build_module(preset, gradient_checkpointing=ckpt, init_seed=seed)
    # The builders leave the models in eval mode and Lightning 2.6's fit keeps modes as it finds
    # them; transformers' gradient checkpointing only acts in train mode (dropout is 0 throughout).
    module.to(dev).train()
    build_s = time.perf_counter() - t0
    batches = fake_batches(module.captioner, module.generator, batch_size, seed=seed)
    ref_batches = fake_batches(module.captioner, module.generator, REFERENCE_BATCH, n=8, seed=seed)
    acc = REFERENCE_ACCUMULATION
    ref_steps = acc * max(1, math.ceil(steps / acc))
    ref_warmup = acc * math.ceil(warmup / acc)
    common = dict(steps=steps, warmup=warmup, device=dev, precision=precision, seed=seed)
    decoders: dict = {}

    def plain(cfg, data=batches, **kw):
        return lambda: run_plain(module, data, cfg, **{**common, **kw})

    phases: dict[str, Phase] = {}

    def run(name, description, fn, batch=batch_size, complete=None):
        phase = phases.setdefault(name, Phase(name, description, batch, complete))
        log(f"  {name}: {description}")
        measure(phase, dev, fn)

    log(f"measuring on {dev} at precision {precision}, batch {batch_size}, {warmup} + {steps} steps ...")
    run("gen_step", "(a) generator only: L_gen", plain(_only(w_gen=1.0)))
    run("cap_step", "(b) captioner only: L_cap", plain(_only(w_cap=1.0)))

    def cached():
        # A full cache: filled by the untimed warmup, one pass over the distinct batches.
        module.frozen_cache = FrozenCache({"latents": True, "text_states": True})
        try:
            return run_plain(module, batches, JOINT, **{**common, "warmup": max(warmup, len(batches))})
        finally:
            module.frozen_cache = None

    compared = [
        ("joint_plain", "(d) joint, 4 terms, plain PyTorch loop", plain(JOINT), batch_size, 1.0),
        ("joint_lightning", "(c) joint, 4 terms, Lightning Trainer",
         lambda: run_lightning(module, batches, **common), batch_size, 1.0),
        ("reference", f"(e) reference schedule: batch {REFERENCE_BATCH}, alternating directions, accumulation {acc}",
         plain(REFERENCE, ref_batches, steps=ref_steps, warmup=ref_warmup, accumulate=acc),
         REFERENCE_BATCH, 0.5),  # two steps of batch 1 apply all four terms to one sample's worth
        ("joint_plain_cached", "(d) with cached VAE posteriors and text-encoder states", cached, batch_size, 1.0),
    ]  # fmt: skip
    for r in range(rounds):
        # every other round in reverse order, so that neither position in a round favours a phase
        for name, description, fn, batch, complete in compared if r % 2 == 0 else compared[::-1]:
            run(name, description, fn, batch=batch, complete=complete)
    run("joint_no_i2t2i", "(d) without L_i2t2i", plain(replace(JOINT, lambda_img=0.0)), complete=None)
    run("joint_no_t2i2t", "(d) without L_t2i2t", plain(replace(JOINT, lambda_txt=0.0)), complete=None)
    _set_cycle_decoder(module, "tiny", dev, ckpt, decoders)
    run("joint_plain_tiny_decoder", "(d) with the tiny (TAESD) decoder", plain(JOINT), complete=1.0)
    run("joint_no_i2t2i_tiny_decoder", "(d) tiny decoder, without L_i2t2i", plain(replace(JOINT, lambda_img=0.0)))
    _set_cycle_decoder(module, "full", dev, ckpt, decoders)

    memory_check = None
    if size == "real":
        memory_check = _memory_check(
            module, phases, batch_size, precision, ckpt, dev, seed, decoders, log=log
        )

    summaries = {name: p.summary() for name, p in phases.items()}
    return {
        "meta": machine_info(dev, threads, busy),
        "config": {
            "size": size,
            "device": str(dev),
            "batch_size": batch_size,
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "precision": precision,
            "gradient_checkpointing": ckpt,
            "reference": {"batch_size": REFERENCE_BATCH, "accumulation": acc, "steps": ref_steps, "warmup": ref_warmup},
            "captioner": {**preset.captioner, "adapter": CAPTIONER_ADAPTER},
            "generator": {**preset.generator, "unet_adapter": UNET_ADAPTER},
            "loss_joint": JOINT.__dict__,
            "loss_reference": REFERENCE.__dict__,
            "optim": OPTIM,
            "build_s": build_s,
            "timing_method": "per-step period, start of step to start of next, warmup and last step untimed"
            + (", torch.cuda.synchronize() at each stamp" if dev.type == "cuda" else ""),
            "memory_method": next((p.memory_method for p in phases.values() if p.memory_method), ""),
            "term_share_method": "L_cap = (b), L_gen = (a), each cycle = (d) - (d without it); plain-loop means",
        },
        "phases": summaries,
        "ratios": ratios(summaries),
        "term_shares": term_shares(summaries),
        "memory_check": memory_check,
    }


def _memory_check(module, phases, batch_size, precision, ckpt, dev, seed, decoders, log=print) -> dict:
    """Peak GPU memory of the joint step at batch 8, bf16-mixed, gradient checkpointing, vs 40 GB."""
    want = dict(batch_size=8, precision="bf16-mixed", gradient_checkpointing=True)
    result = {**want, "limit_gb": MEMORY_LIMIT_GB}
    same = (batch_size, precision, ckpt) == (8, "bf16-mixed", True)
    if dev.type != "cuda":
        return {**result, "skipped": "needs a GPU"}
    if not same:  # measured apart (the last phases: checkpointing stays on)
        log("  memory check: joint step at batch 8, bf16-mixed, gradient checkpointing")
        module.captioner.enable_gradient_checkpointing()
        module.generator.enable_gradient_checkpointing()
        batches = fake_batches(module.captioner, module.generator, 8, seed=seed)
        for kind, name in (("full", "memcheck_full_decoder"), ("tiny", "memcheck_tiny_decoder")):
            _set_cycle_decoder(module, kind, dev, True, decoders)
            phases[name] = measure(
                Phase(name, f"memory check, {kind} decoder", 8, 1.0),
                dev,
                lambda: run_plain(
                    module, batches, JOINT, steps=2, warmup=1, device=dev, precision="bf16-mixed", seed=seed
                ),
            )
        _set_cycle_decoder(module, "full", dev, True, decoders)
        sources = {"full": phases["memcheck_full_decoder"], "tiny": phases["memcheck_tiny_decoder"]}
    else:
        sources = {"full": phases["joint_plain"], "tiny": phases["joint_plain_tiny_decoder"]}
    for kind, phase in sources.items():
        if phase.error:
            result[f"{kind}_decoder"] = {"error": phase.error, "ok": False}
        else:
            gb = phase.peak_bytes / 1e9
            result[f"{kind}_decoder"] = {"peak_gb": gb, "ok": gb <= MEMORY_LIMIT_GB}
    return result


def ratios(phases: dict) -> dict:
    """Ratios of mean step times (`value`) and of median ones (`value_median`: robust to bursts of
    other load on a shared machine). Complete samples/s = batch * (share of all four terms) / step time."""

    def time_of(name, key):
        p = phases.get(name) or {}
        return p.get(key)

    def per_s(name, key):  # complete samples per second from the mean or the median step time
        p = phases.get(name) or {}
        if "complete_samples_per_s" not in p:
            return None
        return p["complete_samples_per_s"] * p["step_time_s"] / p[key]

    specs = {
        "lightning_overhead": (
            "(c)/(d) time per step",
            lambda k: _div(time_of("joint_lightning", k), time_of("joint_plain", k)),
            {"target_max": 1.05},
        ),
        "joint_vs_reference": (
            "complete samples/s of (c) over (e)",
            lambda k: _div(per_s("joint_lightning", k), per_s("reference", k)),
            {"target_min": {"tiny_cpu": 3.0, "real_gpu": 8.0}},
        ),
        "joint_cached_vs_reference": (
            "complete samples/s, plain loop with cached VAE posteriors and text states, over (e)",
            lambda k: _div(per_s("joint_plain_cached", k), per_s("reference", k)),
            {},
        ),
        "tiny_decoder_speedup": (
            "(d) time per step, full over tiny decoder",
            lambda k: _div(time_of("joint_plain", k), time_of("joint_plain_tiny_decoder", k)),
            {},
        ),
        "joint_tiny_decoder_vs_reference": (
            "complete samples/s, plain loop with the tiny decoder, over (e)",
            lambda k: _div(per_s("joint_plain_tiny_decoder", k), per_s("reference", k)),
            {},
        ),
    }
    out = {}
    for name, (what, fn, extra) in specs.items():
        value, median = fn("step_time_s"), fn("step_time_median_s")
        if value is not None:
            out[name] = {"value": value, "value_median": median, "what": what, **extra}
    # The compared phases ran in rounds: the median over rounds of each round's ratio cancels slow
    # drift of the machine's other load. Complete samples/s ratio = (work per step, 8 / 0.5 at the
    # defaults) x (step time of the slower phase) / (step time of the faster one).
    paired = {
        "lightning_overhead": ("joint_lightning", "joint_plain", False),
        "joint_vs_reference": ("joint_lightning", "reference", True),
        "joint_cached_vs_reference": ("joint_plain_cached", "reference", True),
    }
    for name, (num, den, per_sample) in paired.items():
        a, b = (phases.get(num) or {}), (phases.get(den) or {})
        ra, rb = a.get("round_median_step_time_s") or [], b.get("round_median_step_time_s") or []
        if name not in out or not ra or len(ra) != len(rb):
            continue
        if per_sample:
            work = (a["complete_samples_per_s"] * a["step_time_s"]) / (b["complete_samples_per_s"] * b["step_time_s"])
            out[name]["value_paired"] = statistics.median([work * tb / ta for ta, tb in zip(ra, rb)])
        else:
            out[name]["value_paired"] = statistics.median([ta / tb for ta, tb in zip(ra, rb)])
    return out


def _div(a, b):
    return a / b if a and b else None


def term_shares(phases: dict) -> dict:
    def t(name):
        p = phases.get(name) or {}
        return p.get("step_time_s")

    out = {}
    for decoder, joint, no_img in (
        ("full_decoder", "joint_plain", "joint_no_i2t2i"),
        ("tiny_decoder", "joint_plain_tiny_decoder", "joint_no_i2t2i_tiny_decoder"),
    ):
        total, no_txt = t(joint), t("joint_no_t2i2t")
        parts = {"cap": t("cap_step"), "gen": t("gen_step")}
        if not total or None in parts.values() or not no_txt or not t(no_img):
            continue
        parts["i2t2i"] = total - t(no_img)
        parts["t2i2t"] = total - no_txt
        parts["rest"] = total - sum(parts.values())
        out[decoder] = {
            "joint_step_s": total,
            "terms": {k: {"seconds": v, "share": v / total} for k, v in parts.items()},
        }
    return out


# -- environment and report ------------------------------------------------------------------------


def busy_cores(seconds: float = 0.5) -> float | None:
    """Cores kept busy by other processes (this one sleeps meanwhile), from /proc/stat."""

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    n = os.cpu_count() or 1
    return n * (1 - (idle1 - idle0) / max(1, total1 - total0))


def setup_runtime(device: torch.device, threads: int | None = None) -> tuple[int, float | None]:
    """Threads and quieter Lightning; returns (threads, cores busy with other work at the start).

    On a CPU, one intra-op thread per usable core that other processes leave free, and a single
    one on machines of 2 cores or fewer: OpenMP threads that outnumber the free cores wait on each
    other at every parallel region, and on a small shared machine any other process takes a core
    (on 2 cores with one taken, a tiny joint step went from 0.6 s to 5-18 s with 2 threads; 0.8 s
    with 1), which would make the ratios measure the neighbours rather than the code.
    """
    busy = busy_cores()
    if device.type == "cpu":
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        auto = 1 if usable <= 2 else max(1, usable - round(busy or 0))
        torch.set_num_threads(threads or auto)
    else:
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts, as Lightning advises
    import lightning  # noqa: F401  (it sets its loggers' levels on import: import first, then quieten)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*modules? in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=r".*(LoRA|lora).*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")
    return torch.get_num_threads(), busy


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, threads: int, busy: float | None = None) -> dict:
    import diffusers
    import lightning
    import transformers

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "busy_cores_at_start": busy,  # other processes' load: timings on a shared machine vary
        "loadavg_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    return info


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def markdown(result: dict) -> str:
    meta, cfg = result["meta"], result["config"]
    if "gpu" in meta:
        machine = f"GPU {meta['gpu']}, CPU {meta['cpu']}"
    else:
        busy = _fmt(meta["busy_cores_at_start"], 2)
        machine = (
            f"CPU {meta['cpu']}, {meta['torch_threads']} threads of {meta['cpu_count']} cores "
            f"({busy} busy with other work at the start)"
        )
    lines = [
        f"# recon_ft benchmark: size {cfg['size']}",
        "",
        f"Machine: {machine}; "
        f"torch {meta['torch']}, lightning {meta['lightning']}, diffusers {meta['diffusers']}, "
        f"transformers {meta['transformers']}; {meta['date']}.",
        f"Device {cfg['device']}, precision {cfg['precision']}, batch {cfg['batch_size']}, "
        f"{cfg['warmup']} warmup + {cfg['steps']} timed steps, {cfg['rounds']} rounds of (c), (d), (e), (d) cached, "
        f"gradient checkpointing {'on' if cfg['gradient_checkpointing'] else 'off'}. Memory: {cfg['memory_method']}.",
        *([f"Command: `{cfg['command']}`"] if cfg.get("command") else []),
        "",
        "| phase | batch | steps/s | samples/s | complete samples/s | ms/step (mean / median) "
        "| peak memory MB (rise) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, p in result["phases"].items():
        if "error" in p:
            lines.append(f"| {p['description']} | {p['batch_size']} | {p['error']} | | | | |")
            continue
        lines.append(
            f"| {p['description']} | {p['batch_size']} | {_fmt(p['steps_per_s'])} | {_fmt(p['samples_per_s'])} | "
            f"{_fmt(p.get('complete_samples_per_s'))} | "
            f"{p['step_time_s'] * 1e3:.1f} / {p['step_time_median_s'] * 1e3:.1f} | "
            f"{p['peak_memory_bytes'] / 2**20:,.0f} ({p['peak_memory_delta_bytes'] / 2**20:,.0f}) |"
        )
    lines += ["", "| ratio | means | medians | target |", "| --- | ---: | ---: | --- |"]
    for name, r in result["ratios"].items():
        target = ""
        if "target_max" in r:
            target = f"<= {r['target_max']}"
        elif "target_min" in r:
            target = ", ".join(f">= {v} ({k.replace('_', ' on ')})" for k, v in r["target_min"].items())
        lines.append(f"| {name}: {r['what']} | {r['value']:.3f} | {r['value_median']:.3f} | {target} |")
    paired = {name: r["value_paired"] for name, r in result["ratios"].items() if "value_paired" in r}
    if paired:
        lines += ["", f"Paired, the median over the {cfg['rounds']} rounds of each round's ratio: "
                  + ", ".join(f"{name} {value:.3f}" for name, value in paired.items())]
    for decoder, s in result["term_shares"].items():
        lines += [
            "",
            f"Joint step by term, {decoder.replace('_', ' ')} ({s['joint_step_s'] * 1e3:.1f} ms/step, plain loop):",
            "",
            "| term | ms | share |",
            "| --- | ---: | ---: |",
        ]
        for term, v in s["terms"].items():
            lines.append(f"| {term} | {v['seconds'] * 1e3:.1f} | {v['share'] * 100:.0f}% |")
    mc = result.get("memory_check")
    if mc:
        lines += [
            "",
            f"Memory check (batch {mc['batch_size']}, {mc['precision']}, checkpointing): limit {mc['limit_gb']} GB",
        ]
        for kind in ("full_decoder", "tiny_decoder"):
            if kind in mc:
                v = mc[kind]
                lines.append(
                    f"- {kind.replace('_', ' ')}: "
                    + (v["error"] if "error" in v else f"{v['peak_gb']:.1f} GB, {'ok' if v['ok'] else 'OVER'}")
                )
        if "skipped" in mc:
            lines.append(f"- skipped: {mc['skipped']}")
    return "\n".join(lines) + "\n"


def write(result: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(result))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recon_ft.experiments.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per phase (size preset's default)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (size preset's default)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="32 at tiny, bf16-mixed at real")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (d), (c), (e) and (d) cached")
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None, help="on at real, off at tiny"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores left free)")
    parser.add_argument("--out", default="outputs/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    if args.size == "real" and args.device == "auto" and not torch.cuda.is_available():
        parser.error("--size real needs a GPU (or --device cpu, which takes hours)")
    result = run_benchmark(
        size=args.size,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        rounds=args.rounds,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        threads=args.threads,
    )
    result["config"]["command"] = " ".join(["python -m recon_ft.experiments.bench", *(sys.argv[1:] if argv is None else argv)])
    out = write(result, args.out)
    print(markdown(result))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return result


if __name__ == "__main__":
    main()
