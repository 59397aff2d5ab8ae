"""The pairing study's runs: one eval.py subprocess per captioner x generator pair, and which are done.

Layout under the study's out_dir:
    settings.json                   the eval overrides every run shares (a resumed study must match)
    runs/<captioner>__<generator>/  eval.py's output directory (metrics.json, report.html, ...),
                                    wall.json (the subprocess's wall time), bridge.json (coverage)
A pair is done when its metrics.json exists, so an interrupted study started again skips it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from recon_ft.constants import CONF_DIR
from recon_ft.experiments.runner import Chain, Step

ZOO_CAPTIONERS = ("zoo_blip", "zoo_blip2_opt", "zoo_blip2_t5", "zoo_git")
ZOO_GENERATORS = ("zoo_sd", "zoo_sd2", "zoo_sdxl")
# Both analyses on the test split (compositions held out from training), 32 items, k = 5 candidates.
# Captions up to 30 positions with the prompt for every captioner, explicitly, not each captioner's
# own length (eval's caption.max_length: null): the matrix compares captioners under one budget,
# the one their family builds' summaries use (recon_ft.zoo.family_build.CAPTION_KWARGS), and its
# published results (docs/pairs.md) were made with it. 30 holds the longest benchmark caption in
# every family's tokens (16 in the zoo BLIP-2 OPT's byte-level BPE, whose own length is 30 for that
# reason); the zoo BLIP's own 20 could give its row other captions than the published ones.
DEFAULT_EVAL = ("split=test", "limit=32", "caption.max_length=30")
SEPARATOR = "__"


def pair_name(captioner: str, generator: str) -> str:
    return f"{captioner}{SEPARATOR}{generator}"


def pair_dir(out_dir: Path, captioner: str, generator: str) -> Path:
    return Path(out_dir) / "runs" / pair_name(captioner, generator)


def check_names(group: str, names: list[str], conf: Path = CONF_DIR) -> None:
    """Every name a config of conf/<group>/, else one line naming the option and what exists."""
    known = sorted(p.stem for p in (conf / group).glob("*.yaml"))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--{group}s: {unknown} not in conf/{group}/; expected some of {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"--{group}s: a name is given twice: {names}")


def check_settings(out_dir: Path, overrides: list[str]) -> None:
    """Finished runs are reused only under the same eval overrides: settings.json records them at the
    first run; a later call with other overrides fails instead of mixing settings in one matrix."""
    path = Path(out_dir) / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())["eval_overrides"]
        if saved != list(overrides):
            raise ValueError(f"--out {out_dir}: its runs used the eval overrides {saved}, not {list(overrides)}; "
                             "give another --out, or the same --set")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"eval_overrides": list(overrides)}, indent=1) + "\n")


def plan(captioners: list[str], generators: list[str], out_dir: Path, overrides: list[str],
         python: str = sys.executable, threads: int = 1) -> list[Chain]:
    """One chain (a single eval step) per pair, captioner-major order."""
    chains = []
    for c in captioners:
        for g in generators:
            where = pair_dir(out_dir, c, g)
            command = (python, "eval.py", f"captioner={c}", f"generator={g}", *overrides,
                       f"num_threads={threads}", f"hydra.run.dir={where}")
            chains.append(Chain(pair_name(c, g), None, (Step(pair_name(c, g), command, where, "metrics.json"),)))
    return chains
