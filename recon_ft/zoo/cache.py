"""Where zoos live, and building one on first use (once, even with several processes asking).

A zoo whose build is too long for a first use ships with the package (recon_ft/zoo/shipped/<key>:
a build's captioner/, generator/ and zoo.json, which names the commit that built it); the first
use copies it into the cache instead of building it. `python -m recon_ft.zoo --out DIR` rebuilds it.
The default zoo's CLIP ships too (recon_ft/zoo/shipped/clip-<recipe>-<hash>: model.safetensors and
clip.json), not for its build time but because it is a metric extractor: a build differs slightly
between machines, and so would every CLIP number; the shipped one is the same network everywhere.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path

from recon_ft.utils import file_sha256
from recon_ft.zoo.families import FamilyRecipe, get_family_recipe
from recon_ft.zoo.recipe import CLIP_RECIPES, ClipRecipe, ZooRecipe, get_clip_recipe, get_recipe

# Rough build times on 2 CPU cores, said before a first-use build starts.
EXPECTED_MINUTES = {"default": 40, "smoke": 0.2}

# The zoos that ship with the package, one directory per recipe key.
SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"


def cache_root() -> Path:
    """$RECON_FT_CACHE, else $XDG_CACHE_HOME/recon_ft, else ~/.cache/recon_ft."""
    if os.environ.get("RECON_FT_CACHE"):
        return Path(os.environ["RECON_FT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "recon_ft"


def zoo_dir(recipe: ZooRecipe) -> Path:
    return cache_root() / "zoo" / recipe.key


def recipe_name(name: str | None = None) -> str:
    """`name`, else $RECON_FT_ZOO, else "default"."""
    return name or os.environ.get("RECON_FT_ZOO", "default")


def clip_dir(recipe: ClipRecipe) -> Path:
    """The zoo CLIP's directory: its own key (clip-<name>-<hash>) next to the zoos, so that it never
    changes the captioner's and generator's key."""
    return cache_root() / "zoo" / recipe.key


def is_built(directory: Path) -> bool:
    return (directory / "zoo.json").is_file()


def shipped_dir(recipe: ZooRecipe) -> Path | None:
    """The package's copy of the zoo of `recipe` (its key, so a changed recipe never finds a stale
    one), or None."""
    directory = SHIPPED_ROOT / recipe.key
    return directory if is_built(directory) else None


def shipped_clip_dir(recipe: ClipRecipe) -> Path | None:
    """The package's copy of the CLIP of `recipe` (found by its key, as a zoo), or None."""
    directory = SHIPPED_ROOT / recipe.key
    return directory if (directory / "clip.json").is_file() and (directory / "model.safetensors").is_file() else None


def install_shipped(shipped: Path, directory: Path, what: str, detail: str) -> None:
    """Copy a shipped directory into the cache (the caller holds its lock), saying so: whole or
    absent, as a build."""
    print(f"Installing {what} shipped with recon_ft into {directory} ({detail}) ...", file=sys.stderr, flush=True)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(shipped, partial)
    partial.rename(directory)


def ensure_zoo(name: str | None = None) -> Path:
    """The directory of the zoo of recipe `name` (default: $RECON_FT_ZOO, else "default"), copied from
    the package's shipped zoos or else built first if it is absent. Concurrent callers (DDP ranks,
    parallel runs) wait for one build."""
    recipe = get_recipe(recipe_name(name))
    directory = zoo_dir(recipe)
    if is_built(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{recipe.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        shipped = shipped_dir(recipe)
        if not is_built(directory) and shipped is not None:
            install_shipped(shipped, directory, f"the synthetic model zoo '{recipe.name}'",
                            f"built at commit {load_record(shipped).get('commit')}; "
                            "`python -m recon_ft.zoo --out DIR` rebuilds it")
        if not is_built(directory):
            from recon_ft.zoo.build import build_zoo
            from recon_ft.zoo.competence import report

            minutes = EXPECTED_MINUTES.get(recipe.name)
            print(f"Building the synthetic model zoo '{recipe.name}' into {directory} (first use only"
                  + (f"; about {minutes:g} minutes on 2 CPU cores" if minutes else "") + ") ...",
                  file=sys.stderr, flush=True)
            start = time.perf_counter()
            # The CLIP of the same name is built alongside (after the captioner, in its process),
            # unless the package ships it.
            clip = CLIP_RECIPES.get(recipe.name)
            build_clip = functools.partial(build_clip_once, clip, clip_dir(clip), shipped=shipped_clip_dir(clip)) \
                if clip else None
            record = build_zoo(recipe, directory, build_clip=build_clip)
            print(f"zoo built in {(time.perf_counter() - start) / 60:.1f} min\n{report(record['competence'])}",
                  file=sys.stderr, flush=True)
    return directory


def zoo_part(part: str, name: str | None = None) -> str:
    """Path of a zoo model: part "captioner", "generator", "clip" or a family of
    recon_ft.zoo.families (blip2_opt, blip2_t5, git, sd2, sdxl). The Hydra resolver `${zoo:part}`."""
    from recon_ft.zoo.families import FAMILIES

    if part == "clip":
        return str(ensure_clip(name))
    if part in FAMILIES:
        recipe = get_family_recipe(part, recipe_name(name))
        return str(ensure_family(part, name) / recipe.part)
    if part not in ("captioner", "generator"):
        raise ValueError(f"zoo: unknown part {part!r}; expected captioner, generator, clip or one of the "
                         f"families {sorted(FAMILIES)}")
    return str(ensure_zoo(name) / part)


# Build minutes of the family variants on one core, said before a first-use build starts: the smoke
# recipe's, and each family's default recipe's from its step rates on a free core (docs/zoo.md,
# "Other model families in the zoo", has the builds' wall times beside other jobs).
FAMILY_MINUTES = {"smoke": 0.1, "default": {"blip2_opt": 16, "blip2_t5": 24, "git": 16, "sd2": 28, "sdxl": 45}}


def family_dir(recipe: FamilyRecipe) -> Path:
    """A family variant's directory: its own key (<family>-<recipe>-<hash>) next to the zoos."""
    return cache_root() / "zoo" / recipe.key


def ensure_family(family: str, name: str | None = None) -> Path:
    """The directory of the zoo's `family` variant of recipe `name` (default: $RECON_FT_ZOO, else
    "default"), built first if it is absent; concurrent callers wait for one build."""
    recipe = get_family_recipe(family, recipe_name(name))
    directory = family_dir(recipe)
    if (directory / "family.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{recipe.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (directory / "family.json").is_file():
            from recon_ft.zoo.family_build import build_family, report

            minutes = FAMILY_MINUTES.get(recipe.name)
            minutes = minutes.get(family) if isinstance(minutes, dict) else minutes
            print(f"Building the zoo's {family} variant '{recipe.name}' into {directory} (first use only"
                  + (f"; about {minutes:g} minutes on one CPU core" if minutes else "") + ") ...",
                  file=sys.stderr, flush=True)
            print(report(build_family(recipe, directory)), file=sys.stderr, flush=True)
    return directory


def build_clip_once(recipe: ClipRecipe, directory: Path, data=None, shipped: Path | None = None) -> Path:
    """The CLIP in `directory`: found, else copied from `shipped` (the package's copy of this
    recipe's CLIP), else built; concurrent callers wait for one copy or build."""
    if (directory / "clip.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (directory / "clip.json").is_file() and shipped is not None:
            install_shipped(shipped, directory, f"the zoo's CLIP '{recipe.name}' (eval's metric extractor)",
                            f"model.safetensors sha256 {file_sha256(shipped / 'model.safetensors')}; "
                            "`python -m recon_ft.zoo --out DIR` rebuilds it")
        if not (directory / "clip.json").is_file():
            from recon_ft.zoo.clip import build_clip

            print(f"Building the zoo's CLIP '{recipe.name}' into {directory} (first use only"
                  + ("; about 4 minutes on one CPU core" if recipe.name == "default" else "") + ") ...",
                  file=sys.stderr, flush=True)
            build_clip(recipe, directory, data=data)
    return directory


def ensure_clip(name: str | None = None) -> Path:
    """The directory of the zoo CLIP of recipe `name` (default: $RECON_FT_ZOO, else "default"),
    copied from the package's shipped CLIPs (the default's) or else built first if it is absent (it
    does not need the captioner and generator)."""
    recipe = get_clip_recipe(recipe_name(name))
    return build_clip_once(recipe, clip_dir(recipe), shipped=shipped_clip_dir(recipe))


def load_record(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "zoo.json").read_text())
