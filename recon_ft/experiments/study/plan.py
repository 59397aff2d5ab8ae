"""The study's runs as subprocess commands, in the order they can run, and which are already done.

Layout under the study's out_dir:
    runs/<config>/seed<s>/train/           train.py's run directory (hydra.run.dir)
    runs/<config>/seed<s>/eval_<split>/    eval.py's output directory (metrics.json)
    base/eval_<split>/                     eval.py of the base models, no run_dir
A step is done when its result file exists (train: summary.json, written at the run's end; eval:
metrics.json), so an interrupted study started again skips what finished and redoes the rest.
Each finished step also gets wall.json: {"seconds": wall time of its subprocess}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from recon_ft.experiments.runner import Chain, Step

BASE = "base"  # the reference row: the zoo's base models, not finetuned


def load_study(path: str | Path):
    """The study config, checked: configs (name -> overrides) including the baseline, seeds, splits."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study config {path} does not exist (e.g. conf/study/cycle.yaml)")
    cfg = OmegaConf.load(path)
    for key in ("out_dir", "seeds", "configs", "baseline", "eval", "headline"):
        if key not in cfg:
            raise ValueError(f"{path}: missing key {key!r}")
    if cfg.baseline not in cfg.configs:
        raise ValueError(f"{path}: baseline {cfg.baseline!r} is not one of the configs {list(cfg.configs)}")
    if BASE in cfg.configs:
        raise ValueError(f"{path}: the config name {BASE!r} is reserved for the base models' row")
    if not cfg.seeds:
        raise ValueError(f"{path}: seeds is empty; expected a list such as [0, 1, 2]")
    if not cfg.eval.splits:
        raise ValueError(f"{path}: eval.splits is empty; expected e.g. [val, test]")
    return cfg


def run_dir(out_dir: Path, config: str, seed: int) -> Path:
    return Path(out_dir) / "runs" / config / f"seed{seed}"


def plan(cfg, python: str = sys.executable, threads: int = 1) -> list[Chain]:
    """One chain per (config, seed): train, then eval per split; one chain per split for the base
    models. `threads` goes to each subprocess (eval's num_threads; train inherits OMP_NUM_THREADS)."""
    out = Path(cfg.out_dir)
    train_common = list(cfg.get("train_overrides") or [])
    eval_common = list(cfg.eval.get("overrides") or []) + [f"num_threads={threads}"]
    per_split = cfg.eval.get("split_overrides") or {}  # split -> overrides on top of eval_common
    chains = []
    for name, overrides in cfg.configs.items():
        for seed in cfg.seeds:
            where = run_dir(out, name, int(seed))
            train_dir = where / "train"
            steps = [Step(f"{name}/seed{seed}/train",
                          (python, "train.py", *train_common, *overrides, f"seed={seed}",
                           f"hydra.run.dir={train_dir}"),
                          train_dir, "summary.json")]
            for split in cfg.eval.splits:
                eval_dir = where / f"eval_{split}"
                steps.append(Step(f"{name}/seed{seed}/eval_{split}",
                                  (python, "eval.py", f"run_dir={train_dir}", f"split={split}", *eval_common,
                                   *per_split.get(split, []), f"hydra.run.dir={eval_dir}"),
                                  eval_dir, "metrics.json"))
            chains.append(Chain(str(name), int(seed), tuple(steps)))
    for split in cfg.eval.splits:
        eval_dir = out / BASE / f"eval_{split}"
        chains.append(Chain(BASE, None, (Step(f"{BASE}/eval_{split}",
                                              (python, "eval.py", f"split={split}", *eval_common,
                                               *per_split.get(split, []), f"hydra.run.dir={eval_dir}"),
                                              eval_dir, "metrics.json"),)))
    return chains
