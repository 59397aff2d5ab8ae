"""The LightningModule: gets the built captioner and generator, returns named losses, owns the
optimizer, the schedule, per-model gradient clipping and what a checkpoint holds."""

from __future__ import annotations

import logging

import lightning as L
import torch

from recon_ft.method.frozen_cache import CacheConfig, FrozenCache
from recon_ft.method.bridge import VocabBridge
from recon_ft.method.objective import LossConfig, compute_losses
from recon_ft.training.allocator import retain_step_memory
from recon_ft.training.optim import OptimConfig, lr_lambda
from recon_ft.training.term_grads import term_grad_norms

log = logging.getLogger(__name__)

# A 16-mixed grad scaler starts at 2**16 and halves after each overflow; from 1 down an overflow is
# not a scale too high for fp16 but gradients that are not finite at any scale.
MIN_GRAD_SCALE = 1.0


def set_training_modes(captioner, generator, base_dropout: bool = True) -> None:
    """The modules' train / eval modes for training steps, the same whichever way a model was built.

    transformers' and diffusers' from_pretrained return models in eval mode and a model built from
    a config is in train mode; left as they are, a published model would finetune without the
    dropout its config names (and transformers would skip gradient checkpointing, which acts in
    train mode only) while a random-init one trains with it. base_dropout=True puts the captioner,
    the UNet and the text encoder(s) in train mode, as transformers' Trainer and diffusers' LoRA
    scripts do: their dropout as configured (0 throughout in BLIP, SD and the zoo; 0.1 in OPT, T5
    and GIT). False: the frozen weights in eval mode, the adapters' own dropout still on. The VAE
    and a TAESD cycle decoder only encode and decode frozen: always eval.
    """
    for model in (captioner, generator):
        model.train(base_dropout)
        if not base_dropout:  # the adapters' dropout stays on
            for name, module in model.named_modules():
                if "lora_dropout" in name:
                    module.train()
    for frozen in (generator.vae, getattr(generator, "cycle_decoder", None)):
        if frozen is not None:
            frozen.eval()


def build_frozen_cache(cfg, generator) -> FrozenCache | None:
    """The cache of frozen computations a `frozen_cache` config asks for, or None."""
    cfg = CacheConfig.coerce(cfg)
    if not cfg.enabled:
        return None
    if cfg.text_states and not getattr(generator, "text_states_cacheable", True):
        raise ValueError(
            f"frozen_cache.text_states: not supported for {type(generator).__name__} (its conditioning is "
            "not one tensor per caption); use frozen_cache.latents only"
        )
    encoders = generator.text_encoders() if hasattr(generator, "text_encoders") else [generator.text_encoder]
    if cfg.text_states and any(p.requires_grad for te in encoders for p in te.parameters()):
        raise ValueError(
            "frozen_cache.text_states: the text encoder trains (generator.text_encoder_adapter), so its "
            "states change every step; cache them only with text_encoder_adapter.mode=frozen"
        )
    return FrozenCache(cfg)


class ReconModule(L.LightningModule):
    def __init__(self, captioner, generator, loss=None, optim=None, seed: int = 0, max_nonfinite_steps: int = 10,
                 frozen_cache=None, base_dropout: bool = True, term_grad_norms_every_n_steps: int = 0):
        super().__init__()
        self.base_dropout = base_dropout
        self.term_grad_norms_every_n_steps = term_grad_norms_every_n_steps
        self._term_grad_norms_due = 0  # the first step the next measurement may be taken at
        self.seed = seed
        self.max_nonfinite_steps = max_nonfinite_steps
        self.captioner = captioner
        self.generator = generator
        self.loss_cfg = LossConfig.coerce(loss)
        self.optim_cfg = OptimConfig.coerce(optim)
        self.bridge = VocabBridge.from_tokenizers(
            captioner.tokenizer, generator.tokenizer, fallback=self.loss_cfg.bridge_fallback
        )
        self.frozen_cache = build_frozen_cache(frozen_cache, generator)
        # Checkpoints hold the trainable parameters only; the frozen base comes from its source.
        self.strict_loading = False
        # Bad training items: positions in the training set (each counted once however often it
        # is drawn), plus bad samples a dataset reported without a position.
        self._bad_items: set[int] = set()
        self._bad_unplaced = 0
        self._bad_unpaired: set[tuple[str, int]] = set()  # (stream, index) of unpaired items left out
        self._nonfinite_total = 0
        self._nonfinite_run = 0  # consecutive
        self._scaler_skipped_steps = 0  # 16-mixed overflows the grad scaler skipped (not counted above)
        self._skip_step = False

    # -- parameters -------------------------------------------------------------------------------
    def trainable_named_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def _model_params(self, model) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    # -- steps ------------------------------------------------------------------------------------
    @property
    def bad_samples(self) -> int:
        """Distinct bad training items seen so far on this process, with those the dataset left out
        when indexing (an empty caption, say)."""
        return len(self._bad_items) + self._bad_unplaced + self._bad_at_index()

    def _bad_at_index(self) -> int:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return int(getattr(datamodule, "num_bad_at_index", {}).get("train", 0))

    def _count_bad(self, batch) -> None:
        placed = list(batch.get("bad_index", ()))
        self._bad_items.update(int(i) for i in placed)
        self._bad_unplaced += int(batch.get("n_bad", 0)) - len(placed)
        self._bad_unpaired.update((str(s), int(i)) for s, i in batch.get("bad_unpaired", ()))

    def _bad_unpaired_counts(self, items: set[tuple[str, int]]) -> dict[str, float]:
        """data/bad_unpaired_<stream>: distinct items of each unpaired stream left out, when loaded or
        when indexed (an empty or over-long text line), for the streams this run draws from."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        at_index = getattr(datamodule, "num_bad_at_index", {})
        return {f"data/bad_unpaired_{stream}": float(sum(s == stream for s, _ in items)
                                                      + at_index.get(f"unpaired_{stream}", 0))
                for stream in (s.name for s in getattr(datamodule, "streams", []))}

    def training_step(self, batch, batch_idx):
        self._count_bad(batch)
        if not batch["caption"]:  # every sample of this batch was bad (and skipped)
            return None
        out = compute_losses(
            self.captioner, self.generator, self.bridge, batch, self.loss_cfg, batch_idx, rng=self.step_rng(),
            cache=self.frozen_cache,
        )
        b = len(batch["caption"])
        # Measured only where the loggers write (every log_every_n_steps): a value logged at another
        # step is dropped by Lightning, so "every n steps" is the first logged step n after the last.
        every = self.term_grad_norms_every_n_steps
        if every and self.global_step >= self._term_grad_norms_due and self._logs_this_step():
            self._term_grad_norms_due = self.global_step + every
            groups = {"captioner": self._model_params(self.captioner), "generator": self._model_params(self.generator)}
            for name, value in term_grad_norms(out, self.loss_cfg.weights(batch_idx), groups).items():
                self.log(f"grad_norm/{name}", value, batch_size=b)
        loss = self._guard_nonfinite(out)
        if self._logs_this_step():
            for name, value in out.items():
                self.log(f"train/{name}", value.detach(), batch_size=b, prog_bar=name == "loss")
            self.log("data/bad_samples", float(self.bad_samples), batch_size=b)
            for name, value in self._bad_unpaired_counts(self._bad_unpaired).items():
                self.log(name, value, batch_size=b)
            self.log("train/nonfinite_steps", float(self._nonfinite_total), batch_size=b)
            if self.frozen_cache is not None:
                for name, value in self.frozen_cache.stats().items():
                    self.log(f"cache/{name}", value, batch_size=b)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the loggers write training values at this step (every `log_every_n_steps`).

        Each self.log costs about a millisecond of Python; a joint step logs ten values, so values
        that no logger would write are not logged at all.
        """
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _guard_nonfinite(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """A non-finite loss on any rank skips the optimizer step on every rank, and is counted.

        The step still runs backward on a zero loss that touches every trainable parameter, so
        DDP's gradient all-reduce stays in step across ranks; the gradients are then dropped in
        `on_before_optimizer_step`, so neither the moments nor weight decay move.
        """
        finite = bool(torch.isfinite(out["loss"].detach()).item())
        if self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            return out["loss"]
        self._skip_step = True
        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in out.items() if k.startswith("loss_"))
        self._count_nonfinite(f"non-finite loss ({terms})")
        return sum(p.sum() for p in self.trainable_named_parameters().values()) * 0.0

    def _count_nonfinite(self, what: str) -> None:
        """Count a skipped step; `max_nonfinite_steps` in a row stop training."""
        self._nonfinite_total += 1
        self._nonfinite_run += 1
        log.warning("%s at step %d: step skipped", what, self.global_step)
        if self._nonfinite_run >= self.max_nonfinite_steps:
            raise FloatingPointError(
                f"{self._nonfinite_run} consecutive non-finite steps (last: {what}); stopping. "
                "Lower the learning rates, use bf16-mixed instead of 16-mixed, or raise max_nonfinite_steps."
            )

    def _grads_finite(self, optimizer) -> bool:
        """Whether every gradient the optimizer would apply is finite, on every rank.

        A finite loss can still give inf / NaN gradients (an overflow in backward, weights already
        huge after too large a step); one such step turns every weight it touches into NaN.
        One device sync: the per-tensor checks are stacked before `.item()`.
        """
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all().item()) if grads else True
        return self.trainer.strategy.reduce_boolean_decision(finite, all=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this after the AMP grad scaler has unscaled the gradients and before
        # clipping and the optimizer step: the gradients checked are the ones the step would apply.
        skip, self._skip_step = self._skip_step, False
        if not skip and not self._grads_finite(optimizer):
            if self._scaler_searching():
                # fp16's grad scaler found an overflow: it skips this step itself and halves its
                # scale. A run of these is the scaler's normal search for a scale, not a fault.
                self._scaler_skipped_steps += 1
                return
            skip = True
            self._count_nonfinite("non-finite gradients")
        if skip:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        else:
            self._nonfinite_run = 0

    def _scaler_searching(self) -> bool:
        """Whether a 16-mixed grad scaler still has room to lower its scale. Below MIN_GRAD_SCALE an
        overflow is no longer a scale that is too high but gradients that are inf / NaN at any
        scale, and is counted as a non-finite step like any other."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return scaler is not None and scaler.is_enabled() and scaler.get_scale() >= MIN_GRAD_SCALE

    def nonfinite_parameters(self) -> list[str]:
        """Names of trainable parameters holding inf or NaN (none, unless a step slipped through)."""
        return [name for name, p in self.trainable_named_parameters().items() if not torch.isfinite(p).all()]

    def step_rng(self, batch_number: int | None = None) -> torch.Generator:
        """Timesteps and noise of a training batch drawn from (seed, batch number, rank).

        A function of the position in training rather than of a global RNG stream, so a resumed
        run draws exactly what the uninterrupted run would have, and DDP ranks draw differently.
        `batch_number` defaults to the trainer's count of batches so far (0 without a trainer).
        """
        if batch_number is None:
            batch_number = self.trainer.fit_loop.epoch_loop.total_batch_idx if self._trainer is not None else 0
        seed = (self.seed * 1_000_003 + batch_number) * 1009 + self.global_rank
        return torch.Generator(self.device).manual_seed(seed)

    def validation_step(self, batch, batch_idx):
        if not batch["caption"]:
            return
        # Seeded timesteps and noise: validation losses are comparable across evaluations.
        rng = torch.Generator(self.device).manual_seed(batch_idx)
        cfg = LossConfig.coerce({**self.loss_cfg.__dict__, "schedule": "joint"})
        out = compute_losses(self.captioner, self.generator, self.bridge, batch, cfg, batch_idx, rng=rng)
        b = len(batch["caption"])
        for name, value in out.items():
            self.log(f"val/{name}", value, batch_size=b, sync_dist=True, prog_bar=name == "loss")

    def on_fit_start(self) -> None:
        # Lightning keeps the modes it finds; they are set here, whichever way the models were built.
        set_training_modes(self.captioner, self.generator, self.base_dropout)
        if self.trainer.strategy.root_device.type == "cpu":
            # Each step's memory stays mapped for the next one instead of going back to the kernel
            # and being faulted in again (~10% of a CPU step; recon_ft/training/allocator.py).
            retain_step_memory()
        # Vocabulary coverage of the bridge is fixed for a run: logged once, at step 0.
        cov = {f"bridge/{k}": float(v) for k, v in self.bridge.coverage().items() if isinstance(v, (int, float))}
        log.info(
            "vocabulary bridge: %.1f%% of the captioner's tokens matched exactly, %.1f%% by fallback",
            100 * cov["bridge/matched"],
            100 * cov["bridge/fallback"],
        )
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(cov, step=0)

    def on_train_end(self) -> None:
        # Written once more at the end of every run, so runs shorter than log_every_n_steps have
        # them too; the bad items are the union over ranks (a padded shard repeats items).
        bad_samples, bad_unpaired = self._bad_samples_all_ranks()
        totals = {"data/bad_samples": float(bad_samples), "train/nonfinite_steps": float(self._nonfinite_total),
                  **self._bad_unpaired_counts(bad_unpaired)}
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            totals["train/scaler_skipped_steps"] = float(self._scaler_skipped_steps)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(totals, step=self.global_step)

    def _bad_samples_all_ranks(self) -> tuple[int, set[tuple[str, int]]]:
        """(bad paired samples, bad unpaired items), each item once over all ranks."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.bad_samples, self._bad_unpaired
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self._bad_items, self._bad_unplaced, self._bad_unpaired))
        items = set().union(*(s for s, _, _ in gathered))
        unpaired = set().union(*(u for _, _, u in gathered))
        return len(items) + sum(n for _, n, _ in gathered) + self._bad_at_index(), unpaired

    # -- optimization -----------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.optim_cfg
        groups = []
        for name, model, cfg in (("captioner", self.captioner, o.captioner), ("generator", self.generator, o.generator)):
            params = self._model_params(model)
            if params:
                groups.append({"name": name, "params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
        if not groups:
            raise ValueError("nothing to train: both models' adapters are frozen")
        optimizer = torch.optim.AdamW(groups, betas=o.betas, eps=o.eps)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(o.schedule, o.warmup_steps, total, o.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Per-model clipping (the reference clipped the UNet at 1.0 and not BLIP); the trainer-wide
        # gradient_clip_val still applies on top when set.
        for group in optimizer.param_groups:
            clip = getattr(self.optim_cfg, group.get("name", ""), None)
            if clip is not None and clip.grad_clip:
                torch.nn.utils.clip_grad_norm_(group["params"], clip.grad_clip)
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = set(self.trainable_named_parameters())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # The data position itself is the data module's state.
        checkpoint["counters"] = {
            "bad_samples": self.bad_samples,
            "bad_items": sorted(self._bad_items),  # positions in the training set
            "bad_unplaced": self._bad_unplaced,
            "bad_unpaired": sorted(self._bad_unpaired),  # (stream, position in its dataset)
            "nonfinite_steps": self._nonfinite_total,
            "scaler_skipped_steps": self._scaler_skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # FSDP's strategy loads the weights into the sharded model itself and pops "state_dict"
        # before this hook; every other strategy hands it here to be loaded after.
        loaded_here = checkpoint.get("state_dict")
        missing = set(self.trainable_named_parameters()) - set(loaded_here) if loaded_here is not None else set()
        if missing:
            raise ValueError(
                f"checkpoint lacks {len(missing)} trainable parameters (e.g. {sorted(missing)[0]}): "
                "was it written with the same adapter configuration?"
            )
        counters = checkpoint.get("counters", {})
        self._bad_items = set(counters.get("bad_items", ()))
        self._bad_unplaced = counters.get("bad_unplaced", 0)
        self._bad_unpaired = {(str(s), int(i)) for s, i in counters.get("bad_unpaired", ())}
        self._nonfinite_total = counters.get("nonfinite_steps", 0)
        self._scaler_skipped_steps = counters.get("scaler_skipped_steps", 0)
