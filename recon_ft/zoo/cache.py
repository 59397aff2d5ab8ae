"""Where zoos live, and building one on first use (once, even with several processes asking)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from recon_ft.zoo.recipe import ZooRecipe, get_recipe

# Rough build times on 2 CPU cores, said before a first-use build starts.
EXPECTED_MINUTES = {"default": 20, "smoke": 0.2}


def cache_root() -> Path:
    """$RECON_FT_CACHE, else $XDG_CACHE_HOME/recon_ft, else ~/.cache/recon_ft."""
    if os.environ.get("RECON_FT_CACHE"):
        return Path(os.environ["RECON_FT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "recon_ft"


def zoo_dir(recipe: ZooRecipe) -> Path:
    return cache_root() / "zoo" / recipe.key


def is_built(directory: Path) -> bool:
    return (directory / "zoo.json").is_file()


def ensure_zoo(name: str | None = None) -> Path:
    """The directory of the zoo of recipe `name` (default: $RECON_FT_ZOO, else "default"), built
    first if it is absent. Concurrent callers (DDP ranks, parallel runs) wait for one build."""
    recipe = get_recipe(name or os.environ.get("RECON_FT_ZOO", "default"))
    directory = zoo_dir(recipe)
    if is_built(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{recipe.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not is_built(directory):
            from recon_ft.zoo.build import build_zoo
            from recon_ft.zoo.competence import report

            minutes = EXPECTED_MINUTES.get(recipe.name)
            print(f"Building the synthetic model zoo '{recipe.name}' into {directory} (first use only"
                  + (f"; about {minutes:g} minutes on 2 CPU cores" if minutes else "") + ") ...",
                  file=sys.stderr, flush=True)
            start = time.perf_counter()
            record = build_zoo(recipe, directory)
            print(f"zoo built in {(time.perf_counter() - start) / 60:.1f} min\n{report(record['competence'])}",
                  file=sys.stderr, flush=True)
    return directory


def zoo_part(part: str, name: str | None = None) -> str:
    """Path of a zoo model: part "captioner" or "generator". The Hydra resolver `${zoo:part}`."""
    if part not in ("captioner", "generator"):
        raise ValueError(f"zoo: unknown part {part!r}; expected captioner or generator")
    return str(ensure_zoo(name) / part)


def load_record(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "zoo.json").read_text())
