"""python -m recon_ft.experiments.study [conf/study/cycle.yaml] [--jobs N] [--set key=value ...] [--report-only]

Plans every (configuration, seed) run of the study config, runs what is not done yet (train.py then
eval.py per split, as subprocesses; an interrupted study continues where it stopped), validates the
pixel oracle, and writes the report (the config's `docs` page and its data folder). With a `primary`
block it adds the pre-registered comparisons from per-item results (items.py). --report-only
renders the report again, from the runs if they are here, else from the committed data, with the
command, commit and machine it was first written with.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from recon_ft.constants import CONF_DIR, PROJECT_ROOT
from recon_ft.data.oracle import validate_oracle
from recon_ft.experiments.study.aggregate import collect, collect_mechanism, collect_wall, differences, summarize
from recon_ft.experiments.study.items import collect_items, preregistered, primary_spec, read_items
from recon_ft.experiments.study.plan import load_study, plan
from recon_ft.experiments.study.report import read_csv, write_report
from recon_ft.experiments.runner import record_elapsed, record_runs, run_all, threads_per_job

log = logging.getLogger("recon_ft.experiments.study")


def oracle_validation(cfg) -> list[dict]:
    """The oracle on rendered val and test items: drawn at the generator's resolution, drawn at the
    benchmark's 64 px and resized to it (the generator's training images), and at 64 px."""
    size, n = int(cfg.oracle.image_size), int(cfg.oracle.n)
    views = [(size, size), (64, size), (64, 64)] if size != 64 else [(64, 64)]
    return [validate_oracle(split, n, image_size, render_size=render)
            for render, image_size in views for split in ("val", "test")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon_ft.experiments.study", description=__doc__.split("\n\n")[1])
    parser.add_argument("config", nargs="?", default=str(CONF_DIR / "study" / "cycle.yaml"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (the cores are shared out)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="change the study config, e.g. seeds=[0] out_dir=/tmp/study")
    parser.add_argument("--configs", nargs="*", default=None, metavar="NAME",
                        help="only these configurations of the study config (the baseline is kept)")
    parser.add_argument("--report-only", action="store_true", help="aggregate the finished runs, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands still to run")
    parser.add_argument("--validate-oracle", action="store_true", help="print the oracle's validation only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if args.jobs < 1:
        parser.error(f"--jobs: expected at least 1, got {args.jobs}")
    cfg = load_study(args.config)
    if args.set:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args.set))
    if args.configs is not None:
        unknown = sorted(set(args.configs) - set(cfg.configs))
        if unknown:
            parser.error(f"--configs: {unknown} not in the study config's configs {list(cfg.configs)}")
        keep = {str(cfg.baseline), *args.configs}
        cfg.configs = {name: o for name, o in cfg.configs.items() if name in keep}
    # absolute, so that the subprocesses (run from the repository root) and this process agree
    cfg.out_dir, cfg.docs = str(Path(cfg.out_dir).resolve()), str(Path(cfg.docs).resolve())
    if args.validate_oracle:
        for o in oracle_validation(cfg):
            print(o)
        return 0
    threads = threads_per_job(args.jobs)
    chains = plan(cfg, threads=threads)
    if args.dry_run:
        for chain in chains:
            for step in chain.todo:
                print(shlex.join(step.command))
        return 0
    command = "python -m recon_ft.experiments.study " + shlex.join(sys.argv[1:] if argv is None else argv)
    failures = []
    if not args.report_only and any(c.todo for c in chains):
        record_runs(Path(cfg.out_dir), command.strip())
        start = time.perf_counter()
        failures = run_all(chains, args.jobs, threads, PROJECT_ROOT)
        record_elapsed(Path(cfg.out_dir), time.perf_counter() - start)
    spec = primary_spec(cfg)
    data = Path(cfg.docs).parent / Path(cfg.docs).stem
    committed = json.loads((data / "summary.json").read_text()) if (data / "summary.json").is_file() else None
    rows, wall, meta, mechanism = collect(cfg), collect_wall(cfg), None, collect_mechanism(cfg)
    items = collect_items(cfg, spec) if spec else None
    if args.report_only and committed is not None:
        # The report describes the runs, not the moment it is rendered: it keeps the command, commit,
        # date and machine it was first written with, so that a rerun reproduces it byte for byte.
        command, meta = committed["command"], committed["meta"]
        if not rows:  # no runs here (a fresh clone): the committed data
            log.info("no runs under %s: reporting from the committed data in %s", cfg.out_dir, data)
            rows, wall = read_csv(data / "results.csv"), committed["wall_seconds"]
            mechanism = committed.get("mechanism", {})
            items = read_items(data / "items.csv") if spec else None
    if not rows:
        log.error("no finished evaluation under %s: nothing to report", cfg.out_dir)
        return 1
    pre = preregistered(items, spec, str(cfg.baseline)) if spec else None
    write_report(cfg=cfg, command=command.strip(), rows=rows, summary=summarize(rows),
                 diffs=differences(rows, str(cfg.baseline)), wall=wall, oracle=oracle_validation(cfg),
                 docs=Path(cfg.docs), meta=meta, items=items, spec=spec, preregistered=pre, mechanism=mechanism)
    log.info("report: %s", cfg.docs)
    if failures:
        log.error("%d chains failed (run the same command again to retry them)", len(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
