"""Run an experiment's steps as subprocesses (train.py, eval.py), `jobs` chains at a time, each on its
share of the cores; a step whose result file exists is done, so a restarted experiment resumes.
The study and the pairs study plan their steps and hand them here."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from recon_ft.utils import git_commit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    name: str  # e.g. "no_cycle/seed0/train"
    command: tuple[str, ...]
    out_dir: Path
    done_file: str  # summary.json or metrics.json, inside out_dir

    @property
    def done(self) -> bool:
        return (self.out_dir / self.done_file).is_file()


@dataclass(frozen=True)
class Chain:
    """Steps that run one after another (a run's train, then its evaluations)."""
    config: str
    seed: int | None
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def todo(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.done)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads for each of `jobs` parallel runs: the cores shared out, at least one."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, jobs))


def record_runs(out_dir: Path, command: str) -> dict:
    """<out_dir>/runs.json: the command and commit that (first) ran the study's steps, so that a
    report regenerated later (--report-only, another commit) still names them."""
    path = Path(out_dir) / "runs.json"
    if path.is_file():
        return json.loads(path.read_text())
    record = {"command": command, "commit": git_commit(), "started": time.strftime("%Y-%m-%d %H:%M")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def record_elapsed(out_dir: Path, seconds: float) -> dict:
    """Adds one invocation's elapsed time to <out_dir>/runs.json (written by record_runs): a study
    resumed over several invocations reports the time its runs took, not the gap between them."""
    path = Path(out_dir) / "runs.json"
    record = json.loads(path.read_text())
    record["elapsed_s"] = round(record.get("elapsed_s", 0.0) + seconds, 1)
    record["finished"] = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(json.dumps(record, indent=1))
    return record


def run_step(step: Step, threads: int, cwd: Path) -> float:
    """One subprocess, its output in <out_dir>/study.log; returns and records its wall time (s)."""
    step.out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    with open(step.out_dir / "study.log", "w") as logfile:
        result = subprocess.run(step.command, cwd=cwd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{step.name} failed (exit {result.returncode}); see {step.out_dir / 'study.log'}")
    (step.out_dir / "wall.json").write_text(json.dumps({"seconds": seconds, "threads": threads}))
    return seconds


def run_chain(chain: Chain, threads: int, cwd: Path) -> None:
    for step in chain.todo:
        log.info("start %s", step.name)
        seconds = run_step(step, threads, cwd)
        log.info("done %s in %.0f s", step.name, seconds)


def run_all(chains: list[Chain], jobs: int, threads: int, cwd: Path) -> list[str]:
    """Every chain with steps left, `jobs` at a time; returns the failures (a failed chain stops,
    the others go on, and a restart retries it)."""
    todo = [c for c in chains if c.todo]
    skipped = sum(len(c.steps) - len(c.todo) for c in chains)
    log.info("%d chains to run (%d steps already done, skipped)", len(todo), skipped)
    failures = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_chain, c, threads, cwd): c for c in todo}
        for future, chain in futures.items():
            try:
                future.result()
            except RuntimeError as exc:
                log.error("%s", exc)
                failures.append(str(exc))
    return failures
