"""python -m recon_ft.experiments.pairs [--captioners ...] [--generators ...] [--jobs N] [--set eval overrides] [--out DIR] [--docs DIR]

Runs eval.py's I2T2I and T2I2T analyses for every captioner x generator pair given (config names of
conf/captioner/ and conf/generator/; default: the synthetic zoo's variant of every family), as
subprocesses, skipping pairs already evaluated (an interrupted study continues where it stopped),
then computes each pair's vocabulary-bridge coverage and writes the matrix report: <docs>/pairs.md
and <docs>/pairs/ (results.csv, a heatmap PNG per headline metric, report.html).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from recon_ft.constants import PROJECT_ROOT
from recon_ft.experiments.pairs.collect import collect
from recon_ft.experiments.pairs.coverage import pair_coverage
from recon_ft.experiments.pairs.plan import (DEFAULT_EVAL, ZOO_CAPTIONERS, ZOO_GENERATORS, check_names, check_settings, pair_dir,
                                 plan)
from recon_ft.experiments.pairs.report import write_report
from recon_ft.experiments.machine import machine
from recon_ft.experiments.runner import run_all, threads_per_job

log = logging.getLogger("recon_ft.experiments.pairs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon_ft.experiments.pairs", description=__doc__.split("\n\n")[1])
    parser.add_argument("--captioners", nargs="+", default=list(ZOO_CAPTIONERS), metavar="NAME")
    parser.add_argument("--generators", nargs="+", default=list(ZOO_GENERATORS), metavar="NAME")
    parser.add_argument("--jobs", type=int, default=1, help="pairs evaluated at a time (the cores are shared out)")
    parser.add_argument("--set", nargs="*", default=list(DEFAULT_EVAL), metavar="KEY=VALUE",
                        help=f"eval.py overrides for every pair (default: {' '.join(DEFAULT_EVAL)}); e.g. "
                             "split=val limit=null metrics=real paths.clip_weights=...")
    parser.add_argument("--out", default="outputs/pairs", help="where the runs go (default: outputs/pairs)")
    parser.add_argument("--docs", default="docs", help="where pairs.md and pairs/ go (default: docs)")
    parser.add_argument("--report-only", action="store_true", help="report the finished pairs, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands still to run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if args.jobs < 1:
        parser.error(f"--jobs: expected at least 1, got {args.jobs}")
    try:
        check_names("captioner", args.captioners)
        check_names("generator", args.generators)
    except ValueError as exc:
        parser.error(str(exc))
    out, docs = Path(args.out).resolve(), Path(args.docs).resolve()  # the subprocesses run from the repository root
    threads = threads_per_job(args.jobs)
    chains = plan(args.captioners, args.generators, out, args.set, threads=threads)
    if args.dry_run:
        for chain in chains:
            for step in chain.todo:
                print(shlex.join(step.command))
        return 0
    failures = []
    if not args.report_only:
        try:
            check_settings(out, args.set)
        except ValueError as exc:
            parser.error(str(exc))
        failures = run_all(chains, args.jobs, threads, PROJECT_ROOT)
    for c in args.captioners:
        for g in args.generators:
            if (pair_dir(out, c, g) / "metrics.json").is_file():
                try:
                    pair_coverage(c, g, pair_dir(out, c, g) / "bridge.json", args.set)
                except Exception as exc:  # noqa: BLE001 - the matrix is still worth writing; the table says "-"
                    log.error("bridge coverage of %s x %s failed: %s", c, g, exc)
    rows = collect(args.captioners, args.generators, out)
    if not any(r["metrics"] for r in rows):
        log.error("no finished pair under %s: nothing to report", out)
        return 1
    command = "python -m recon_ft.experiments.pairs " + shlex.join(sys.argv[1:] if argv is None else argv)
    path = write_report(command=command.strip(), overrides=list(args.set), machine=machine(), rows=rows,
                        captioners=args.captioners, generators=args.generators, out_dir=out, docs=docs)
    log.info("report: %s", path)
    if failures:
        log.error("%d pairs failed (run the same command again to retry them)", len(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
