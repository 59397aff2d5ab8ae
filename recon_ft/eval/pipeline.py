"""Compose config -> load the pair -> predict on every device -> analyze and report on rank 0.

`eval.py` at the top level is the Hydra entry; `evaluate(cfg)` is what it runs (and what tests call
with a composed config). See conf/eval.yaml for the settings and docs/metrics.md for the outputs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recon_ft.data.transforms import GeneratorView
from recon_ft.eval.analyses import AnalysisSettings, analyze
from recon_ft.eval.captioning import CaptionSettings
from recon_ft.eval.generation import GenerationSettings
from recon_ft.eval.load import Pair, load_pair
from recon_ft.eval.predict import EvalModule, EvalSettings, Head, eval_loader
from recon_ft.eval import metrics as M
from recon_ft.eval import report

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def settings_from(cfg: DictConfig, pair: Pair) -> tuple[EvalSettings, AnalysisSettings]:
    caption = CaptionSettings(**OmegaConf.to_container(cfg.caption, resolve=True))
    if caption.max_length is None:  # the captioner's own (its config's caption_max_length)
        caption.max_length = int(pair.captioner.caption_max_length)
    generation = GenerationSettings(**OmegaConf.to_container(cfg.generation, resolve=True))
    if generation.guidance_scale is None:  # the generator's own (its config's guidance_scale)
        generation.guidance_scale = float(pair.generator.guidance_scale)
    a = cfg.analysis
    predict = EvalSettings(seed=int(cfg.seed), k=int(a.k), i2t2i=bool(a.i2t2i), t2i2t=bool(a.t2i2t),
                           steps=generation.steps(pair.tiny_generator), caption=caption, generation=generation)
    analysis = AnalysisSettings(k=int(a.k), i2t2i=bool(a.i2t2i), t2i2t=bool(a.t2i2t),
                                text_similarity=str(cfg.metrics.text_similarity), select_seed=int(a.select_seed),
                                spice=str(cfg.metrics.spice), meteor=bool(cfg.metrics.meteor),
                                fid_batch_size=int(cfg.metrics.fid_batch_size),
                                is_splits=int(cfg.metrics.get("is_splits", 10)))
    return predict, analysis


FID_REAL = ("resize", "center_crop")


def fid_real(cfg: DictConfig) -> str:
    how = str(cfg.metrics.get("fid_real", "resize"))
    if how not in FID_REAL:
        raise ValueError(f"metrics.fid_real: expected one of {FID_REAL}, got {how!r}")
    return how


def build_datamodule(cfg: DictConfig, pair: Pair):
    """The data group's datamodule, only the evaluated split built, cut to `limit` items."""
    split = cfg.split
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if cfg.data.get(split) is None:
        raise ValueError(f"data: the data config has no {split} split (set split= to one it has)")
    others = {s: None for s in SPLITS if s != split}
    c, g = pair.captioner, pair.generator
    dm = instantiate(
        cfg.data, **others,
        caption_view={"size": c.image_size, "mean": c.mean.flatten().tolist(), "std": c.std.flatten().tolist()},
        generator_view={"size": g.image_size},
    )
    if fid_real(cfg) == "center_crop":
        # the source images (FID's real side, CLIP-I's reference) as FID's standard centre crop
        dm._view_dataset(split).generator_view = GeneratorView(g.image_size, crop=True)
    dataset = dm.datasets[split]
    total = len(dataset)
    if cfg.get("limit") is not None and cfg.limit < total:
        log.warning("evaluating the first %d of %d %s items (limit=%d; limit=null for all)", cfg.limit, total,
                    split, cfg.limit)
        dm.datasets[split] = Head(dataset, cfg.limit)
    return dm, total


def build_clip(clip_cfg: DictConfig):
    target = str(clip_cfg.get("_target_", ""))
    if target.endswith("open_clip_features") and not clip_cfg.get("pretrained") \
            and not str(clip_cfg.get("model_name", "")).startswith("local-dir:"):
        raise ValueError("metrics.clip: real CLIP features need weights: set paths.clip_weights=<an open_clip "
                         "ViT-B-32 checkpoint file> (nothing is downloaded)")
    return instantiate(clip_cfg)


def build_trainer(cfg: DictConfig, out_dir: Path) -> L.Trainer:
    # Loggers are written by rank 0 after the analysis; the sampler shards itself (no padding).
    return instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=str(out_dir),
                       use_distributed_sampler=False)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation; returns metrics.json's content on rank 0 ({} on other ranks)."""
    threads = torch.get_num_threads()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    try:
        return _evaluate(cfg)
    finally:
        torch.set_num_threads(threads)


def _evaluate(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    M.require_java()  # the analysis needs it: fail now rather than after hours of generation
    out_dir = Path(cfg.out_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = build_trainer(cfg, out_dir)
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)

    pair = load_pair(cfg)
    predict_settings, analysis_settings = settings_from(cfg, pair)
    clip = build_clip(cfg.metrics.clip)
    datamodule, split_size = build_datamodule(cfg, pair)
    loader = eval_loader(datamodule, cfg.split, cfg.get("batch_size"))
    module = EvalModule(pair.captioner, pair.generator, clip, predict_settings, out_dir)
    loaded = time.perf_counter()

    trainer.predict(module, dataloaders=loader, return_predictions=False)
    predicted = time.perf_counter()
    is_zero = trainer.is_global_zero
    if dist.is_available() and dist.is_initialized():
        # The rows are gathered: the rest runs on rank 0 alone, so no metric may try to sync
        # (torchmetrics would, on a live process group).
        dist.barrier()
        dist.destroy_process_group()
    if not is_zero:
        return {}

    rows, notes = module.rows, []
    # The predictions are saved before the analysis (which rewrites them with its scores), so a
    # failing metric never loses the generation's work.
    report.write_samples(rows, out_dir)
    device = module.device
    fid_feature = instantiate(cfg.metrics.fid).to(device) if cfg.metrics.get("fid") else None
    is_feature = instantiate(cfg.metrics.inception_score).to(device) if cfg.metrics.get("inception_score") else None
    metrics = analyze(rows, out_dir, analysis_settings, clip=clip, fid_feature=fid_feature, notes=notes,
                      is_feature=is_feature)
    sbert = analysis_settings.t2i2t and analysis_settings.text_similarity == "sbert"  # SBERT scored T2I2T
    metrics.update(report.extractor_info(clip, fid_feature, is_feature, fid_real(cfg), sbert=sbert))
    bad_at_index = int(datamodule.num_bad_at_index.get(cfg.split, 0))
    metrics.update({
        "data/items": float(len(rows)),
        "data/split_size": float(split_size),
        "data/bad_samples": float(module.n_bad + bad_at_index),
    })
    if module.n_bad + bad_at_index:
        notes.append(f"{module.n_bad + bad_at_index} bad samples skipped (missing / unreadable image or no caption)")
    analyzed = time.perf_counter()

    contents = getattr(datamodule.datasets[cfg.split], "contents", None)
    split = f"{cfg.split} ({contents})" if contents else cfg.split
    info = {
        "models": pair.source,
        "split": split,
        "items": len(rows),
        "k": predict_settings.k,
        "diffusion steps": predict_settings.steps,
        "guidance scale": predict_settings.generation.guidance_scale,
        "caption": f"{predict_settings.caption.mode}, {predict_settings.caption.num_beams} beams, length "
                   f"{predict_settings.caption.min_length}-{predict_settings.caption.max_length} with the prompt, "
                   f"top-p {predict_settings.caption.top_p}",
        "devices": trainer.world_size,
        "FID real images": metrics["extractors/fid_real"],
    }
    report.write_metrics(metrics, out_dir)
    report.write_samples(rows, out_dir)
    grids = report.write_grids(rows, out_dir, int(cfg.report.grid_items))
    report.write_html(metrics, out_dir, grids, info, notes)
    loggers = [instantiate(c, save_dir=str(out_dir)) for c in (cfg.get("logger") or {}).values() if c]
    if loggers:
        report.log_to_loggers(loggers, metrics, rows, grids)
    end = time.perf_counter()
    timing = {"load_s": loaded - start, "predict_s": predicted - loaded, "analysis_s": analyzed - predicted,
              "report_s": end - analyzed, "total_s": end - start, "items": len(rows), "devices": trainer.world_size,
              "items_per_s_predict": len(rows) / max(predicted - loaded, 1e-9)}
    (out_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    log.info("evaluation of %d items written to %s (%.0f s)", len(rows), out_dir, end - start)
    for note in notes:
        log.warning(note)
    print(report.console_summary(metrics, out_dir, split=f"{split}, {len(rows)} items"), flush=True)
    return metrics
