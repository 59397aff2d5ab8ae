"""python -m recon_ft.zoo [--recipe default] [--out DIR] [--threads N]: build a zoo and print its summary.

Without --out the zoo goes to the cache that `${zoo:...}` reads (a second call finds it there; a zoo
shipped with the package, recon_ft/zoo/shipped, is copied there instead of built), and its CLIP
(the synthetic benchmark's metric extractor, metrics=zoo; shipped too for the default recipe) into
its own cache directory; --out always builds from scratch, and the CLIP goes to DIR/clip.

python -m recon_ft.zoo --family blip2_opt [git ...] | all [--recipe default|smoke] [--out DIR]: build
(or find) the other families' variants instead (recon_ft.zoo.families), one after the other, each on
one thread, into the cache that `${zoo:<family>}` reads (or DIR/<family>).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> None:
    from recon_ft.utils import file_sha256
    from recon_ft.zoo.build import build_zoo, resummarize
    from recon_ft.zoo.cache import build_clip_once, ensure_clip, ensure_zoo, load_record
    from recon_ft.zoo.clip_check import report as clip_report
    from recon_ft.zoo.competence import report
    from recon_ft.zoo.families import FAMILIES
    from recon_ft.zoo.recipe import RECIPES, get_clip_recipe, get_recipe

    parser = argparse.ArgumentParser(prog="python -m recon_ft.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    parser.add_argument("--out", help="build into this directory instead of the cache (always rebuilds)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--family", nargs="+", metavar="FAMILY",
                        help=f"build these family variants instead: {' '.join(sorted(FAMILIES))}, or all")
    parser.add_argument("--resummarize", action="store_true",
                        help="measure the competence summary of the built zoo again (after the scorers changed)")
    args = parser.parse_args(argv)
    if args.family:
        return build_families(parser, args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.out:
        record = build_zoo(get_recipe(args.recipe), args.out)
        directory = args.out
        clip = build_clip_once(get_clip_recipe(args.recipe), Path(args.out) / "clip")
    else:
        directory = ensure_zoo(args.recipe)
        record = load_record(directory)
        if args.resummarize:
            record = resummarize(directory, get_recipe(args.recipe))
        # found when the zoo's build made it or a first use copied the shipped one; else built now (minutes)
        clip = ensure_clip(args.recipe)
    clip_record = json.loads((clip / "clip.json").read_text())
    print(f"zoo: {directory}")
    print(f"build seconds: {json.dumps(record['seconds'])}")
    print(report(record["competence"]))
    print(f"CLIP: {clip} (built in {clip_record['seconds']['total']} s; "
          f"model.safetensors sha256 {file_sha256(clip / 'model.safetensors')})")
    print(f"  {clip_report(clip_record['validation'])}")


def build_families(parser, args) -> None:
    """--family: each named variant (its recipe of --recipe's name) built or found, its summary printed."""
    from recon_ft.zoo.cache import ensure_family
    from recon_ft.zoo.families import FAMILIES, get_family_recipe
    from recon_ft.zoo.family_build import build_family, report

    families = sorted(FAMILIES) if args.family == ["all"] else args.family
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"--family: {unknown} unknown; expected some of {sorted(FAMILIES)} or all")
    for family in families:
        recipe = get_family_recipe(family, args.recipe)
        if args.out:
            record = build_family(recipe, Path(args.out) / family)
            directory = Path(args.out) / family
        else:
            directory = ensure_family(family, args.recipe)
            record = json.loads((directory / "family.json").read_text())
        print(f"{family}: {directory / recipe.part}")
        print(report(record), flush=True)


if __name__ == "__main__":
    main()
