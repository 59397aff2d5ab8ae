"""Throughput and memory of the joint objective: `python -m recon_ft.experiments.bench --size tiny|real`.

One process builds one captioner + generator pair and times, on the same models and batches, the
joint step through Lightning and in a plain loop, each loss term alone and the reference
implementation's schedule (the phases: phases.py); it writes bench.json and bench.md (report.py).
The models' adapters, the optimizer and the losses are train.py's, composed from conf/ (settings.py).
"""

from __future__ import annotations

import argparse
import sys

import torch

from recon_ft.experiments.bench.loops import PRECISIONS
from recon_ft.experiments.bench.phases import run_benchmark
from recon_ft.experiments.bench.report import markdown, write
from recon_ft.experiments.bench.settings import SIZE_NAMES


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recon_ft.experiments.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZE_NAMES), default="tiny")
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
    parser.add_argument("--unpaired", action="store_true",
                        help="also time the joint step plus each unpaired term (soft, ranked, self_train, text)")
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
        unpaired=args.unpaired,
    )
    args_given = sys.argv[1:] if argv is None else argv
    result["config"]["command"] = " ".join(["python -m recon_ft.experiments.bench", *args_given])
    out = write(result, args.out)
    print(markdown(result))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return result


if __name__ == "__main__":
    main()
