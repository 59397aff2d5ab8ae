"""Host-device synchronisations of one training step under Lightning, on a GPU.

    python scripts/count_syncs.py [--size tiny] [--batch-size 8] [--precision 32]

torch.cuda.set_sync_debug_mode("warn") makes every synchronising CUDA call warn. The joint step
(the four terms, tiny models) runs through ReconModule.fit twice, for 2 and for 6 timed steps; the
difference of the two warning counts over 4 steps is what one steady step synchronises, without
the fit's setup. docs/performance.md lists the reads a step is meant to make (2, +1 with t_max).
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings

import torch

from recon_ft.experiments.bench.batches import fake_batches
from recon_ft.experiments.bench.loops import run_lightning
from recon_ft.experiments.bench.models import build_module
from recon_ft.experiments.bench.settings import size_preset


def syncs_of(module, batches, steps: int, device, precision: str) -> collections.Counter:
    """Where the synchronising calls of a fit with `steps` timed steps come from: file:line -> count."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_lightning(module, batches, steps=steps, warmup=1, device=device, precision=precision)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "zoo"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="32")
    parser.add_argument("--out", default=None, help="a json file for the counts")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("count_syncs.py needs a GPU: a CPU has no host-device synchronisation to count")
    device = torch.device("cuda")
    module = build_module(size_preset(args.size)).to(device).train()
    batches = fake_batches(module.captioner, module.generator, args.batch_size)
    short, long = (syncs_of(module, batches, n, device, args.precision) for n in (2, 6))
    per_step = {where: (long[where] - short[where]) / 4 for where in long if long[where] != short[where]}
    result = {"per_step_total": sum(per_step.values()), "per_step_by_site": per_step,
              "fit_total_2_steps": sum(short.values()), "fit_total_6_steps": sum(long.values())}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
