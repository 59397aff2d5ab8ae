"""The phases of one benchmark run, on the same models and batches:

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
  joint_unpaired_*     (--unpaired) (d) plus one unpaired term, as many unpaired rows as paired:
                       the image cycle by mode (soft, ranked, self_train) and the text cycle

and the joint step's time per loss term, with the VAE decoder and with the tiny (TAESD) decoder;
at real size also the memory check (peak GPU memory at batch 8, bf16-mixed, checkpointing).

(c), (d), (e) and (d) cached run in rounds (`--rounds`), every other round in reverse order, so that
drift of the machine hits them alike. How a step is timed: loops.py; memory: memory.py; the ratios
and term shares drawn from the phases: report.py.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field, replace

import torch

from recon_ft.experiments.bench.batches import fake_batches, with_unpaired
from recon_ft.experiments.bench.loops import PRECISIONS, run_lightning, run_plain
from recon_ft.experiments.bench.memory import MemoryProbe
from recon_ft.experiments.bench.models import build_module, set_cycle_decoder
from recon_ft.experiments.bench.report import ratios, term_shares
from recon_ft.experiments.bench.runtime import machine_info, setup_runtime
from recon_ft.experiments.bench.settings import MEMORY_LIMIT_GB, measured, size_preset
from recon_ft.method.frozen_cache import FrozenCache
from recon_ft.method.objective import LossConfig


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


# (phase, description, LossConfig changes): each adds one unpaired term to the joint step
UNPAIRED_PHASES = [
    ("joint_unpaired_soft", "(d) + L_i2t2i_unpaired, soft", dict(lambda_img_unpaired=1.0, unpaired_image_mode="soft")),
    ("joint_unpaired_ranked", "(d) + L_i2t2i_unpaired, ranked (beam + 4 samples, 4 draws)",
     dict(lambda_img_unpaired=1.0, unpaired_image_mode="ranked")),
    ("joint_unpaired_self_train", "(d) + L_i2t2i_unpaired, self_train",
     dict(lambda_img_unpaired=1.0, unpaired_image_mode="self_train")),
    ("joint_unpaired_text", "(d) + L_t2i2t_unpaired (10 DDIM steps, gradient through the last 1)",
     dict(lambda_txt_unpaired=1.0)),
]  # fmt: skip


def _only(joint: LossConfig, **weights) -> LossConfig:
    base = dict(w_cap=0.0, w_gen=0.0, lambda_img=0.0, lambda_txt=0.0)
    return replace(joint, **{**base, **weights})


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
    unpaired: bool = False,
    log=print,
) -> dict:
    """Every measurement of the module docstring, on one model pair; the JSON-ready result."""
    preset, m = size_preset(size), measured()
    joint, reference = m.joint, m.reference
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
    ref_batch, acc = m.reference_batch, m.reference_accumulation
    ref_batches = fake_batches(module.captioner, module.generator, ref_batch, n=8, seed=seed)
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
    run("gen_step", "(a) generator only: L_gen", plain(_only(joint, w_gen=1.0)))
    run("cap_step", "(b) captioner only: L_cap", plain(_only(joint, w_cap=1.0)))

    def cached():
        # A full cache: filled by the untimed warmup, one pass over the distinct batches.
        module.frozen_cache = FrozenCache({"latents": True, "text_states": True})
        try:
            return run_plain(module, batches, joint, **{**common, "warmup": max(warmup, len(batches))})
        finally:
            module.frozen_cache = None

    compared = [
        ("joint_plain", "(d) joint, 4 terms, plain PyTorch loop", plain(joint), batch_size, 1.0),
        ("joint_lightning", "(c) joint, 4 terms, Lightning Trainer",
         lambda: run_lightning(module, batches, **common), batch_size, 1.0),
        ("reference", f"(e) reference schedule: batch {ref_batch}, alternating directions, accumulation {acc}",
         plain(reference, ref_batches, steps=ref_steps, warmup=ref_warmup, accumulate=acc),
         ref_batch, 0.5),  # two steps of batch 1 apply all four terms to one sample's worth
        ("joint_plain_cached", "(d) with cached VAE posteriors and text-encoder states", cached, batch_size, 1.0),
    ]  # fmt: skip
    for r in range(rounds):
        # every other round in reverse order, so that neither position in a round favours a phase
        for name, description, fn, batch, complete in compared if r % 2 == 0 else compared[::-1]:
            run(name, description, fn, batch=batch, complete=complete)
    run("joint_no_i2t2i", "(d) without L_i2t2i", plain(replace(joint, lambda_img=0.0)), complete=None)
    run("joint_no_t2i2t", "(d) without L_t2i2t", plain(replace(joint, lambda_txt=0.0)), complete=None)
    set_cycle_decoder(module, "tiny", dev, ckpt, decoders)
    run("joint_plain_tiny_decoder", "(d) with the tiny (TAESD) decoder", plain(joint), complete=1.0)
    run("joint_no_i2t2i_tiny_decoder", "(d) tiny decoder, without L_i2t2i", plain(replace(joint, lambda_img=0.0)))
    set_cycle_decoder(module, "full", dev, ckpt, decoders)
    if unpaired:
        mixed = with_unpaired(batches, module.captioner, module.generator, seed=seed + 1)
        for name, description, term in UNPAIRED_PHASES:
            run(name, description, plain(replace(joint, **term), mixed))

    memory_check = None
    if size == "real":
        memory_check = _memory_check(module, phases, batch_size, precision, ckpt, dev, seed, decoders, log=log)

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
            "reference": {"batch_size": ref_batch, "accumulation": acc, "steps": ref_steps, "warmup": ref_warmup},
            "captioner": {**preset.captioner, "adapter": m.captioner_adapter},
            "generator": {**preset.generator, "unet_adapter": m.unet_adapter},
            "loss_joint": joint.__dict__,
            "loss_reference": reference.__dict__,
            "optim": m.optim,
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
        joint = measured().joint
        for kind, name in (("full", "memcheck_full_decoder"), ("tiny", "memcheck_tiny_decoder")):
            set_cycle_decoder(module, kind, dev, True, decoders)
            phases[name] = measure(
                Phase(name, f"memory check, {kind} decoder", 8, 1.0),
                dev,
                lambda: run_plain(
                    module, batches, joint, steps=2, warmup=1, device=dev, precision="bf16-mixed", seed=seed
                ),
            )
        set_cycle_decoder(module, "full", dev, True, decoders)
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
