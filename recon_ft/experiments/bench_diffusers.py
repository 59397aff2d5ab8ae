"""Generator-only training, ours against diffusers' own LoRA text-to-image example, side by side.

    python -m recon_ft.experiments.bench_diffusers --script path/to/diffusers/examples/text_to_image/train_text_to_image_lora.py

Both programs train the same LoRA (rank 16, alpha 16, on to_q / to_k / to_v / to_out.0 of the
UNet) with L_gen only, on the same tiny Stable Diffusion pipeline saved to disk and the same
fabricated image-caption pairs, at the same batch size, learning rate (constant), weight decay,
gradient clipping and precision, one process each, with the same number of CPU threads:

  ours:      python train.py generator.pretrained=<pipeline> data=jsonl loss.w_cap=0 ... (Lightning)
  diffusers: python <script> --pretrained_model_name_or_path <pipeline> --train_data_dir <images> ...

The example script needs `accelerate` and `datasets` (pip install -e ".[bench]"); it is read from
a diffusers checkout and never copied here.

Timing: a `sitecustomize` put on both programs' PYTHONPATH registers torch's global optimizer
step hook and writes the time of every optimizer step when the process exits; neither program is
changed. The time per step is the median period between consecutive steps after `--warmup` steps,
so start-up (imports, model loading, data indexing) and the final save are not counted. On a CPU
with two or more cores the two programs run at the same time, one core each (see `compare`): the
speed of a shared machine drifts by tens of percent within seconds, and this way both see the same
drift. The median over `--repeats` is reported, with each program's whole wall time beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recon_ft.constants import PROJECT_ROOT

RANK = 16  # conf/generator/tiny_sd.yaml's UNet adapter (the example sets lora_alpha = rank)
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 1e-2  # the example's default, and optim.generator.weight_decay of conf/train.yaml
MAX_GRAD_NORM = 1.0  # the example's default, and optim.generator.grad_clip


def prepare(workdir: Path, n_images: int = 64, seed: int = 0) -> dict:
    """The tiny pipeline (diffusers layout) and the image-caption pairs, in both programs' formats:
    captions.jsonl ({"image", "caption"}) for ours, images/metadata.jsonl ({"file_name", "text"}),
    the `imagefolder` layout, for the example."""
    from recon_ft.data.fabricate import write_jsonl
    from recon_ft.models.sd import build_stable_diffusion

    pipeline = workdir / "pipeline"
    generator = build_stable_diffusion(
        tiny={"sample_size": 32, "cross_attention_dim": 32, "prediction_type": "epsilon"}, init_seed=seed
    )
    generator.save_base(pipeline)
    data = write_jsonl(workdir / "data", n=n_images, seed=seed, image_size=generator.image_size)
    images = data["jsonl"].parent / "images"
    with data["jsonl"].open() as src, (images / "metadata.jsonl").open("w") as dst:
        for line in src:
            record = json.loads(line)
            dst.write(json.dumps({"file_name": Path(record["image"]).name, "text": record["caption"]}) + "\n")
    return {"pipeline": pipeline, "jsonl": data["jsonl"], "images": images, "resolution": generator.image_size}


def ours_command(prep: dict, steps: int, batch_size: int, out: Path, device: str = "cpu") -> list[str]:
    return [
        sys.executable, str(PROJECT_ROOT / "train.py"),
        f"run_dir={out}",
        f"trainer={'gpu' if device == 'cuda' else 'cpu'}",
        f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=10",
        "callbacks.model_checkpoint.every_n_train_steps=1000000",
        f"generator.pretrained={prep['pipeline']}",
        "generator.tiny=null",
        "generator.save_base_to=null",
        f"generator.unet_adapter.r={RANK}",
        f"generator.unet_adapter.alpha={RANK}",
        "data=jsonl",
        f"paths.jsonl={prep['jsonl']}",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        "data.caption_view.augment=none",
        "loss.w_cap=0",
        "loss.lambda_img=0",
        "loss.lambda_txt=0",
        f"optim.generator.lr={LEARNING_RATE}",
        f"optim.generator.weight_decay={WEIGHT_DECAY}",
        f"optim.generator.grad_clip={MAX_GRAD_NORM}",
        "optim.schedule=constant",
        "optim.warmup_steps=0",
    ]  # fmt: skip


def diffusers_command(script: Path, prep: dict, steps: int, batch_size: int, out: Path) -> list[str]:
    return [
        sys.executable, str(script),
        f"--pretrained_model_name_or_path={prep['pipeline']}",
        f"--train_data_dir={prep['images']}",
        f"--resolution={prep['resolution']}",
        "--center_crop",
        f"--train_batch_size={batch_size}",
        f"--max_train_steps={steps}",
        f"--learning_rate={LEARNING_RATE}",
        "--lr_scheduler=constant",
        "--lr_warmup_steps=0",
        f"--rank={RANK}",
        f"--adam_weight_decay={WEIGHT_DECAY}",
        f"--max_grad_norm={MAX_GRAD_NORM}",
        "--mixed_precision=no",
        "--dataloader_num_workers=0",
        "--checkpointing_steps=1000000",
        "--seed=0",
        f"--output_dir={out}",
        f"--cache_dir={out / 'hf_cache'}",
    ]  # fmt: skip


# Loaded at start-up of both programs (PYTHONPATH), active only when RECON_FT_STEP_TIMES names a file.
STEP_HOOK = """\
import os

if os.environ.get("RECON_FT_STEP_TIMES"):
    import atexit
    import time

    from torch.optim.optimizer import register_optimizer_step_post_hook

    _stamps = []
    register_optimizer_step_post_hook(lambda *_: _stamps.append(time.perf_counter()))

    @atexit.register
    def _write():
        with open(os.environ["RECON_FT_STEP_TIMES"], "w") as f:
            f.write("\\n".join(repr(t) for t in _stamps))
"""


def _launch(command: list[str], env: dict, log_path: Path, stamps_path: Path, cpu: int | None):
    log = log_path.open("w")
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen(command, env={**env, "RECON_FT_STEP_TIMES": str(stamps_path)}, stdout=log,
                            stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, preexec_fn=pin)
    return proc, log


def _finish(proc, log, command: list[str], log_path: Path, stamps_path: Path, steps: int) -> list[float]:
    """The run's optimizer step times (perf_counter, comparable across processes); fails loudly,
    naming the log."""
    proc.wait()
    log.close()
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"{command[1]} exited with {proc.returncode}; see {log_path}:\n" + "\n".join(tail))
    if not stamps_path.is_file():
        raise RuntimeError(f"{command[1]}: no optimizer step times written (see {log_path})")
    stamps = [float(t) for t in stamps_path.read_text().split()]
    if len(stamps) != steps:
        raise RuntimeError(f"{command[1]}: {len(stamps)} optimizer steps recorded, expected {steps} (see {log_path})")
    return stamps


def _periods(stamps: list[float], lo: float = float("-inf"), hi: float = float("inf")) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:]) if a >= lo and b <= hi]


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def compare(script: Path, workdir: Path, steps: int, warmup: int, batch_size: int, repeats: int, threads: int,
            device: str = "cpu", mode: str = "auto", log=print) -> dict:
    """Runs both programs `repeats` times; per-step times as described in the module docstring.

    mode "concurrent" (the default on a CPU with two or more cores and one thread per program):
    both programs run at the same time, each pinned to its own core, cores swapped every other
    repeat; only steps inside the window where both are past their warmup and still training are
    counted. Both then see the same state of the machine, so drift in its speed (other tenants of
    a shared host) cancels from their ratio. "sequential": one program after the other, in
    alternating order.
    """
    if not script.is_file():
        raise FileNotFoundError(f"--script {script}: not found (diffusers' examples/text_to_image/train_text_to_image_lora.py)")
    if steps <= warmup + 1:
        raise ValueError(f"--steps ({steps}) must exceed --warmup ({warmup}) + 1")
    cpus = usable_cpus()
    if mode == "auto":
        mode = "concurrent" if device == "cpu" and threads == 1 and len(cpus) >= 2 else "sequential"
    if mode == "concurrent" and (device != "cpu" or threads != 1 or len(cpus) < 2):
        raise ValueError("--mode concurrent needs --device cpu, --threads 1 and at least 2 usable cores")
    workdir.mkdir(parents=True, exist_ok=True)
    prep = prepare(workdir)
    hook = workdir / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(STEP_HOOK)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join([str(hook), str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    commands = {
        "ours": lambda out: ours_command(prep, steps, batch_size, out, device),
        "diffusers": lambda out: diffusers_command(script, prep, steps, batch_size, out),
    }
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for r in range(repeats):
        order = list(commands) if r % 2 == 0 else list(commands)[::-1]
        stamps: dict[str, list[float]] = {}
        walls: dict[str, float] = {}
        paths = {name: (workdir / f"{name}_{r}.log", workdir / f"{name}_{r}.steps") for name in commands}
        if mode == "concurrent":
            t0 = time.perf_counter()
            pending = {name: (_launch(commands[name](workdir / f"{name}_{r}"), env, *paths[name], cpus[i]))
                       for i, name in enumerate(order)}  # ours on the first core in even repeats
            while pending:  # each program's wall time ends when it does, whichever finishes first
                for name, (proc, fh) in list(pending.items()):
                    if proc.poll() is not None:
                        walls[name] = time.perf_counter() - t0
                        stamps[name] = _finish(proc, fh, proc.args, *paths[name], steps)
                        del pending[name]
                time.sleep(0.05)
            lo = max(s[warmup] for s in stamps.values())
            hi = min(s[-1] for s in stamps.values())
        else:
            for name in order:
                t0 = time.perf_counter()
                proc, fh = _launch(commands[name](workdir / f"{name}_{r}"), env, *paths[name], None)
                stamps[name] = _finish(proc, fh, proc.args, *paths[name], steps)
                walls[name] = time.perf_counter() - t0
        for name in commands:
            if mode == "concurrent":
                periods = _periods(stamps[name], lo, hi)
            else:
                periods = _periods(stamps[name][warmup:])
            if len(periods) < 10:
                raise RuntimeError(f"{name}: only {len(periods)} steps timed in repeat {r}; raise --steps")
            runs[name].append({"wall_s": walls[name], "steps_timed": len(periods),
                               "step_median_s": statistics.median(periods), "step_mean_s": statistics.mean(periods)})
        log(f"  repeat {r}: " + ", ".join(f"{name} {runs[name][-1]['step_median_s'] * 1e3:.1f} ms/step "
                                          f"({runs[name][-1]['steps_timed']} steps)" for name in commands))
    result = {"config": {"steps": steps, "warmup": warmup, "batch_size": batch_size, "repeats": repeats,
                         "threads": threads, "device": device, "mode": mode, "rank": RANK,
                         "resolution": prep["resolution"], "script": str(script)}, "programs": {}}
    for name, rs in runs.items():
        step_s = statistics.median(r["step_median_s"] for r in rs)
        result["programs"][name] = {
            "step_time_s": step_s,
            "steps_per_s": 1 / step_s,
            "samples_per_s": batch_size / step_s,
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "runs": rs,
        }
    p = result["programs"]
    result["speedup"] = p["diffusers"]["step_time_s"] / p["ours"]["step_time_s"]
    # per repeat the two ran together (or back to back): the median of those ratios is robust to drift
    result["speedup_paired"] = statistics.median(
        d["step_median_s"] / o["step_median_s"] for o, d in zip(runs["ours"], runs["diffusers"])
    )
    return result


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Generator-only LoRA training, tiny pipeline at {cfg['resolution']} px, batch {cfg['batch_size']}, "
        f"rank {cfg['rank']}, fp32, {cfg['device']} with {cfg['threads']} thread(s); {cfg['steps']} steps per run, "
        f"time per step = median period between optimizer steps after {cfg['warmup']}, median of "
        f"{cfg['repeats']} runs each; {cfg['mode']} runs"
        + (" (the two at once, one core each, swapped every other repeat; steps timed while both train)."
           if cfg["mode"] == "concurrent" else " (one after the other, alternating order)."),
        "",
        "| program | ms/step | steps/s | samples/s | whole run, s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, p in result["programs"].items():
        label = "recon_ft train.py (L_gen only)" if name == "ours" else "diffusers train_text_to_image_lora.py"
        lines.append(f"| {label} | {p['step_time_s'] * 1e3:.1f} | {p['steps_per_s']:.2f} | {p['samples_per_s']:.1f} "
                     f"| {p['wall_s']:.1f} |")
    lines += ["", f"Speed of ours over the example's: {result['speedup']:.3f}x (median of each program's runs), "
              f"{result['speedup_paired']:.3f}x (median over repeats of the back-to-back ratio); >= 1 means ours is "
              "at least as fast."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m recon_ft.experiments.bench_diffusers")
    parser.add_argument("--script", type=Path, required=True, help="diffusers' train_text_to_image_lora.py")
    parser.add_argument("--workdir", type=Path, default=None, help="where pipeline, data and runs go (default: temporary)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps not timed at the start of each run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--mode", choices=("auto", "concurrent", "sequential"), default="auto",
                        help="auto: concurrent on a CPU with 2+ cores at 1 thread, else sequential")
    parser.add_argument("--out", type=Path, default=Path("bench_diffusers"), help="folder for the JSON and markdown")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        result = compare(args.script.resolve(), workdir.resolve(), args.steps, args.warmup, args.batch_size,
                         args.repeats, args.threads, args.device, args.mode)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_diffusers.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "bench_diffusers.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
