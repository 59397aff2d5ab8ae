"""python -m recon_ft.study [conf/study/plan.yaml] [--jobs N] [--report-only] [--only NAME ...]

Runs the experiments of docs/study/plan.md in its order, each through its own tool (E0: the
generator's ranking, recon_ft.experiments.generator_ranks; finetuning experiments: the study runner,
recon_ft.experiments.study, resumable), then writes docs/study.md: per experiment its question, the
answer in one sentence with its effect and 95% interval, the pre-registered comparisons, the metrics
the plan reports beside them, the wall time and a link to the experiment's own report; then the
total wall time. --report-only runs nothing and renders every report again, on a fresh clone from
the committed data, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from recon_ft.constants import CONF_DIR, PROJECT_ROOT

log = logging.getLogger("recon_ft.study")
KINDS = ("ranks", "study", "pending")


def load_plan(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study plan {path} does not exist (e.g. conf/study/plan.yaml)")
    cfg = OmegaConf.load(path)
    for i, e in enumerate(cfg.experiments):
        if e.get("kind") not in KINDS:
            raise ValueError(f"{path}: experiments[{i}] ({e.get('name')}): kind must be one of {KINDS}, got {e.get('kind')!r}")
        if e.kind == "study" and not e.get("config"):
            raise ValueError(f"{path}: experiments[{i}] ({e.name}): a study experiment needs its config")
        if e.get("beside") and (e.kind != "study" or any(not (b.get("metric") and b.get("what")) for b in e.beside)):
            raise ValueError(f"{path}: experiments[{i}] ({e.name}): beside: is a study experiment's list of "
                             "{metric, what}")
    return cfg


def command(e, jobs: int, report_only: bool) -> list[str] | None:
    """The experiment's own tool, or None for a pending one."""
    if e.kind == "ranks":
        return [sys.executable, "-m", "recon_ft.experiments.generator_ranks", *map(str, e.args),
                *(["--report-only"] if report_only else [])]
    if e.kind == "study":
        return [sys.executable, "-m", "recon_ft.experiments.study", str(e.config),
                *(["--report-only"] if report_only else ["--jobs", str(jobs)])]
    return None


def report_path(e, root: Path) -> Path:
    """The experiment's own report (markdown), relative to the project root."""
    if e.kind == "study":
        return Path(OmegaConf.load(root / e.config).docs)
    return Path(e.report)


def _f(x: float) -> str:
    return f"{x:.3f}"


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def ranks_answer(summary: dict) -> list[str]:
    """E0's answer: the generator's pick of the true kind against the captioner's, held-out objects."""
    test = summary["test"]
    gen, cap = test["kind/heldout_objects/gen_correct"], test["kind/heldout_objects/cap_correct"]
    chance = test["kind/heldout_objects/chance"]
    return [f"On the test objects of held-out colour-kind pairs, the generator's denoising loss picks the true "
            f"kind out of its edits on {_f(gen[0])} [{_f(gen[1])}, {_f(gen[2])}] of them, where the captioner "
            f"names it on {_f(cap[0])} [{_f(cap[1])}, {_f(cap[2])}] (chance {_f(chance[0] if isinstance(chance, list) else chance)}): "
            "the generator knows what the captioner gets wrong."]


def _rejected(c: dict) -> str:
    """A rejected comparison in words; where its interval (seeds, then items) still holds 0, the
    permutation test (items as the unit) rejected what the seeds' spread leaves uncertain."""
    said = f"{c['arm']} {'raises' if c['effect'] > 0 else 'lowers'} it"
    if c["ci"][0] <= 0.0 <= c["ci"][1]:
        down = sum(x * c["effect"] < 0 for x in c["seed_effects"])
        said += (f" by the items' permutation test, though its interval over seeds and items holds 0 "
                 f"({down} of {len(c['seed_effects'])} seeds the other way)")
    return said


def study_answer(summary: dict) -> list[str]:
    """A finetuning experiment's answer from its pre-registered comparisons."""
    pre = summary.get("preregistered")
    if not pre:
        return ["(no pre-registered comparison in its report)"]
    metric, base = pre["metric"], pre["baseline"]
    lines = []
    groups = dict.fromkeys((c["metric"], c.get("against", base)) for c in pre["primary"])  # in the plan's order
    for m, against in groups:
        family = [c for c in pre["primary"] if c["metric"] == m and c.get("against", base) == against]
        rejected = [c for c in family if c.get("rejected")]
        parts = [f"{c['arm']} {_signed(c['effect'])} [{_signed(c['ci'][0])}, {_signed(c['ci'][1])}] (p Holm "
                 f"{_p(c.get('p_holm'))})" for c in family if c["effect"] is not None]
        verdict = ("; ".join(_rejected(c) for c in rejected) + " (family-wise 0.05)" if rejected
                   else f"no arm differs from {against} at family-wise 0.05")
        lines.append(f"`{m}` on {pre['split']}, against {against}: " + "; ".join(parts) + f". So {verdict}.")
    for c in pre["controls"]:
        if c["effect"] is not None:
            lines.append(f"Control {c['arm']}: {_signed(c['effect'])} [{_signed(c['ci'][0])}, {_signed(c['ci'][1])}] "
                         f"(p {_p(c['p'])}).")
    for c in pre.get("ceilings", []):
        if c["effect"] is not None and c.get("share_differing") == 0:
            lines.append(f"Ceiling {c['arm']}, `{c['metric']}`: identical to {base} on every item and seed "
                         "(the report says why).")
        elif c["effect"] is not None:
            lines.append(f"Ceiling {c['arm']}, `{c['metric']}` against {base}: {_signed(c['effect'])} "
                         f"[{_signed(c['ci'][0])}, {_signed(c['ci'][1])}] (p {_p(c['p'])}).")
    explored = [c for c in pre.get("exploratory", []) if c["metric"] == metric and c["effect"] is not None]
    if explored:
        lines.append("Exploratory, added after the plan: " + "; ".join(
            f"{c['arm']} against {c['against']} {_signed(c['effect'])} [{_signed(c['ci'][0])}, {_signed(c['ci'][1])}] "
            f"(p {_p(c['p'])})" for c in explored) + ".")
    return lines


def run_minutes(summary: dict) -> tuple[float | None, str]:
    """The experiment's run time in minutes (None where its data did not record it) and the line
    that says so. A study's is the sum of its runs' wall times (train, then each evaluation); with
    --jobs 2 two ran at a time, so the elapsed time (where runs.json recorded it) is about half."""
    if "wall_seconds" not in summary:
        return None, "Wall time: not recorded by its run."
    wall = summary["wall_seconds"]
    if not isinstance(wall, dict):  # E0: one process
        cpu = summary["machine"]
        return wall / 60, (f"Wall time: {wall / 60:.0f} min, one process with {summary['threads']} threads "
                           f"({cpu['cpu']}, {cpu['cpu_count']} CPUs).")
    splits = len({r["split"] for r in summary["summary"]})
    total = sum((w["train"] or 0.0) * w["n_train"] + (w["eval"] or 0.0) * max(w["n_train"], 1) * splits
                for w in wall.values())
    runs = summary["meta"].get("runs", {})
    elapsed = (f", {runs['elapsed_s'] / 60:.0f} min elapsed with `{runs['command']}`"
               if "elapsed_s" in runs else "")
    n = sum(w["n_train"] for w in wall.values())
    return total / 60, (f"Wall time: {n} finetuning runs and their evaluations, {total / 60:.0f} min of run time "
                        f"(the sum of each step's wall time){elapsed}.")


def load_summary(e, root: Path) -> dict | None:
    report = root / report_path(e, root)
    data = report.parent / (report.stem if e.kind == "study" else "")
    summary_file = data / "summary.json"
    return json.loads(summary_file.read_text()) if summary_file.is_file() else None


def beside_answer(summary: dict, beside) -> list[str]:
    """Metrics the plan reports beside the primary one (E3: the trained-against captioner's own
    reading), from the report's seed-level differences: exploratory, outside the family."""
    split, lines = summary["preregistered"]["split"], []
    for b in beside:
        diffs = [d for d in summary["differences"] if d["metric"] == b.metric and d["split"] == split]
        parts = [f"{d['config']} {_signed(d['mean'])} [{_signed(d['ci_low'])}, {_signed(d['ci_high'])}] "
                 f"(p {_p(d['p'])})" for d in diffs if d["mean"] is not None]
        lines.append(f"Beside it, {b.what} (`{b.metric}`, exploratory: paired t-test over seeds): " + "; ".join(parts) + ".")
    return lines


def answer(e, summary: dict | None) -> list[str]:
    if e.kind == "pending":
        return [f"Not answered: {str(e.why).strip()}"]
    if summary is None:
        return ["Not answered: no results yet."]
    lines = ranks_answer(summary) if e.kind == "ranks" else study_answer(summary)
    if e.get("beside"):
        lines += beside_answer(summary, e.beside)
    return lines + [run_minutes(summary)[1]]


def markdown(plan, root: Path) -> str:
    docs_dir = (root / plan.docs).parent
    plan_link = (root / plan.plan).relative_to(docs_dir)
    out = [f"# {plan.title}", "",
           f"Every experiment of [the plan]({plan_link}), committed before its first result, in its "
           "order; each answer comes from the experiment's own report, linked, which holds its tables, "
           "plots, data and the exploratory comparisons. Regenerate with `python -m recon_ft.study "
           "--report-only`.", ""]
    minutes = {}
    for e in plan.experiments:
        summary = None if e.kind == "pending" else load_summary(e, root)
        out += [f"## {e.name}: {e.question}", ""]
        out += [f"- {line}" for line in answer(e, summary)]
        if e.kind != "pending":
            link = (root / report_path(e, root)).relative_to(docs_dir)
            out += [f"- Report: [{link}]({link})"]
            minutes[e.name] = run_minutes(summary)[0] if summary else None
        out.append("")
    recorded = {name: m for name, m in minutes.items() if m is not None}
    if recorded:
        missing = [name for name in minutes if name not in recorded]
        out += ["## Wall time", "",
                f"The run time of {' + '.join(recorded)}: {sum(recorded.values()):.0f} min "
                "(each experiment's line above says how it was counted)"
                + (f"; not recorded: {', '.join(missing)}." if missing else "."), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon_ft.study", description=__doc__.split("\n\n")[1])
    parser.add_argument("plan", nargs="?", default=str(CONF_DIR / "study" / "plan.yaml"))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME", help="run only these experiments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    plan = load_plan(args.plan)
    root = PROJECT_ROOT
    failed = []
    for e in plan.experiments:
        cmd = command(e, args.jobs, args.report_only)
        if cmd is None or (args.only is not None and e.name not in args.only):
            continue
        log.info("%s: %s", e.name, " ".join(cmd[1:]))
        if subprocess.run(cmd, cwd=root).returncode != 0:
            failed.append(e.name)
    (root / plan.docs).write_text(markdown(plan, root))
    log.info("wrote %s", plan.docs)
    if failed:
        log.error("failed: %s (run the same command again to resume)", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
