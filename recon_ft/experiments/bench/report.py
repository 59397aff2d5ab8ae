"""What a run's phases add up to: the ratios between them, the joint step's time per loss term,
and the report (bench.json and bench.md).

Ratios come from mean step times, from medians (robust to bursts of other load on a shared
machine) and, for the phases run in rounds, as the median over rounds of each round's ratio
("paired").

Share of the joint step per term (plain loop, mean step times): L_cap = (b), the captioner pass it
shares with L_i2t2i; L_gen = (a), the VAE encoding, text encoder and denoiser pass it shares with
both cycles; each cycle term = (d) minus (d) without that term, i.e. what the term adds to the joint
step (its extra passes and their backward). What is left ("rest") is (d) minus those four: the
second optimizer step counted by (a) and (b) makes it slightly negative; noise moves it too.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def ratios(phases: dict) -> dict:
    """Ratios of mean step times (`value`) and of median ones (`value_median`: robust to bursts of
    other load on a shared machine). Complete samples/s = batch * (share of all four terms) / step time."""

    def time_of(name, key):
        p = phases.get(name) or {}
        return p.get(key)

    def per_s(name, key):  # complete samples per second from the mean or the median step time
        p = phases.get(name) or {}
        if "complete_samples_per_s" not in p:
            return None
        return p["complete_samples_per_s"] * p["step_time_s"] / p[key]

    specs = {
        "lightning_overhead": (
            "(c)/(d) time per step",
            lambda k: _div(time_of("joint_lightning", k), time_of("joint_plain", k)),
            {"target_max": 1.05},
        ),
        "joint_vs_reference": (
            "complete samples/s of (c) over (e)",
            lambda k: _div(per_s("joint_lightning", k), per_s("reference", k)),
            {"target_min": {"tiny_cpu": 3.0, "real_gpu": 8.0}},
        ),
        "joint_cached_vs_reference": (
            "complete samples/s, plain loop with cached VAE posteriors and text states, over (e)",
            lambda k: _div(per_s("joint_plain_cached", k), per_s("reference", k)),
            {},
        ),
        "tiny_decoder_speedup": (
            "(d) time per step, full over tiny decoder",
            lambda k: _div(time_of("joint_plain", k), time_of("joint_plain_tiny_decoder", k)),
            {},
        ),
        "joint_tiny_decoder_vs_reference": (
            "complete samples/s, plain loop with the tiny decoder, over (e)",
            lambda k: _div(per_s("joint_plain_tiny_decoder", k), per_s("reference", k)),
            {},
        ),
    }
    for mode in ("soft", "ranked", "self_train", "text"):
        specs[f"unpaired_{mode}_cost"] = (
            f"(d) + the unpaired {'text cycle' if mode == 'text' else 'image cycle, ' + mode} over (d), time per step",
            lambda k, mode=mode: _div(time_of(f"joint_unpaired_{mode}", k), time_of("joint_plain", k)),
            {},
        )
    out = {}
    for name, (what, fn, extra) in specs.items():
        value, median = fn("step_time_s"), fn("step_time_median_s")
        if value is not None:
            out[name] = {"value": value, "value_median": median, "what": what, **extra}
    # The compared phases ran in rounds: the median over rounds of each round's ratio cancels slow
    # drift of the machine's other load. Complete samples/s ratio = (work per step, 8 / 0.5 at the
    # defaults) x (step time of the slower phase) / (step time of the faster one).
    paired = {
        "lightning_overhead": ("joint_lightning", "joint_plain", False),
        "joint_vs_reference": ("joint_lightning", "reference", True),
        "joint_cached_vs_reference": ("joint_plain_cached", "reference", True),
    }
    for name, (num, den, per_sample) in paired.items():
        a, b = (phases.get(num) or {}), (phases.get(den) or {})
        ra, rb = a.get("round_median_step_time_s") or [], b.get("round_median_step_time_s") or []
        if name not in out or not ra or len(ra) != len(rb):
            continue
        if per_sample:
            work = (a["complete_samples_per_s"] * a["step_time_s"]) / (b["complete_samples_per_s"] * b["step_time_s"])
            out[name]["value_paired"] = statistics.median([work * tb / ta for ta, tb in zip(ra, rb)])
        else:
            out[name]["value_paired"] = statistics.median([ta / tb for ta, tb in zip(ra, rb)])
    return out


def _div(a, b):
    return a / b if a and b else None


def term_shares(phases: dict) -> dict:
    def t(name):
        p = phases.get(name) or {}
        return p.get("step_time_s")

    out = {}
    for decoder, joint, no_img in (
        ("full_decoder", "joint_plain", "joint_no_i2t2i"),
        ("tiny_decoder", "joint_plain_tiny_decoder", "joint_no_i2t2i_tiny_decoder"),
    ):
        total, no_txt = t(joint), t("joint_no_t2i2t")
        parts = {"cap": t("cap_step"), "gen": t("gen_step")}
        if not total or None in parts.values() or not no_txt or not t(no_img):
            continue
        parts["i2t2i"] = total - t(no_img)
        parts["t2i2t"] = total - no_txt
        parts["rest"] = total - sum(parts.values())
        out[decoder] = {
            "joint_step_s": total,
            "terms": {k: {"seconds": v, "share": v / total} for k, v in parts.items()},
        }
    return out


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def markdown(result: dict) -> str:
    meta, cfg = result["meta"], result["config"]
    if "gpu" in meta:
        machine = f"GPU {meta['gpu']}, CPU {meta['cpu']}"
    else:
        busy = _fmt(meta["busy_cores_at_start"], 2)
        machine = (
            f"CPU {meta['cpu']}, {meta['torch_threads']} threads of {meta['cpu_count']} cores "
            f"({busy} busy with other work at the start)"
        )
    lines = [
        f"# recon_ft benchmark: size {cfg['size']}",
        "",
        f"Machine: {machine}; "
        f"torch {meta['torch']}, lightning {meta['lightning']}, diffusers {meta['diffusers']}, "
        f"transformers {meta['transformers']}; {meta['date']}.",
        f"Device {cfg['device']}, precision {cfg['precision']}, batch {cfg['batch_size']}, "
        f"{cfg['warmup']} warmup + {cfg['steps']} timed steps, {cfg['rounds']} rounds of (c), (d), (e), (d) cached, "
        f"gradient checkpointing {'on' if cfg['gradient_checkpointing'] else 'off'}. Memory: {cfg['memory_method']}.",
        *([f"Command: `{cfg['command']}`"] if cfg.get("command") else []),
        "",
        "| phase | batch | steps/s | samples/s | complete samples/s | ms/step (mean / median) "
        "| peak memory MB (rise) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, p in result["phases"].items():
        if "error" in p:
            lines.append(f"| {p['description']} | {p['batch_size']} | {p['error']} | | | | |")
            continue
        lines.append(
            f"| {p['description']} | {p['batch_size']} | {_fmt(p['steps_per_s'])} | {_fmt(p['samples_per_s'])} | "
            f"{_fmt(p.get('complete_samples_per_s'))} | "
            f"{p['step_time_s'] * 1e3:.1f} / {p['step_time_median_s'] * 1e3:.1f} | "
            f"{p['peak_memory_bytes'] / 2**20:,.0f} ({p['peak_memory_delta_bytes'] / 2**20:,.0f}) |"
        )
    lines += ["", "| ratio | means | medians | target |", "| --- | ---: | ---: | --- |"]
    for name, r in result["ratios"].items():
        target = ""
        if "target_max" in r:
            target = f"<= {r['target_max']}"
        elif "target_min" in r:
            target = ", ".join(f">= {v} ({k.replace('_', ' on ')})" for k, v in r["target_min"].items())
        lines.append(f"| {name}: {r['what']} | {r['value']:.3f} | {r['value_median']:.3f} | {target} |")
    paired = {name: r["value_paired"] for name, r in result["ratios"].items() if "value_paired" in r}
    if paired:
        lines += ["", f"Paired, the median over the {cfg['rounds']} rounds of each round's ratio: "
                  + ", ".join(f"{name} {value:.3f}" for name, value in paired.items())]
    for decoder, s in result["term_shares"].items():
        lines += [
            "",
            f"Joint step by term, {decoder.replace('_', ' ')} ({s['joint_step_s'] * 1e3:.1f} ms/step, plain loop):",
            "",
            "| term | ms | share |",
            "| --- | ---: | ---: |",
        ]
        for term, v in s["terms"].items():
            lines.append(f"| {term} | {v['seconds'] * 1e3:.1f} | {v['share'] * 100:.0f}% |")
    mc = result.get("memory_check")
    if mc:
        lines += [
            "",
            f"Memory check (batch {mc['batch_size']}, {mc['precision']}, checkpointing): limit {mc['limit_gb']} GB",
        ]
        for kind in ("full_decoder", "tiny_decoder"):
            if kind in mc:
                v = mc[kind]
                lines.append(
                    f"- {kind.replace('_', ' ')}: "
                    + (v["error"] if "error" in v else f"{v['peak_gb']:.1f} GB, {'ok' if v['ok'] else 'OVER'}")
                )
        if "skipped" in mc:
            lines.append(f"- skipped: {mc['skipped']}")
    return "\n".join(lines) + "\n"


def write(result: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(markdown(result))
    return out
