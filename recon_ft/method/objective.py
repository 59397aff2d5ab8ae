"""The joint objective: one batch -> the named losses, with the forward passes shared.

  L = w_cap L_cap + w_gen L_gen + lambda_img L_i2t2i + lambda_txt L_t2i2t
      + lambda_img_unpaired L_i2t2i_unpaired + lambda_txt_unpaired L_t2i2t_unpaired

L_cap and L_i2t2i share the captioner's teacher-forced pass; L_gen and L_t2i2t share the
denoiser's pass. So the cycles cost one extra text-encoder + denoiser pass (soft caption) and one
extra decoder + captioner pass (generated image). A term whose weight is 0 is not computed; the
unpaired terms (recon_ft/method/unpaired.py) only on batches that drew unpaired rows, after every
paired term, so the paired terms' draws are the same with or without them.

Used by the LightningModule and by the plain-PyTorch loop of the benchmark, so both do exactly the
same maths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recon_ft.method import losses as L
from recon_ft.method.frozen_cache import FrozenCache
from recon_ft.method.passes import noised_latents, soft_caption_denoising
from recon_ft.method.unpaired import IMAGE_MODES, image_cycle_unpaired, text_cycle_unpaired
from recon_ft.utils import dataclass_from, expect


@dataclass
class LossConfig:
    w_cap: float = 1.0
    w_gen: float = 1.0
    lambda_img: float = 0.1  # image cycle, trains the captioner through the generator
    lambda_txt: float = 0.1  # text cycle, trains the generator through the captioner
    schedule: str = "joint"  # joint | alternate (reference: even steps gen + text cycle, odd cap + image cycle)
    label_smoothing: float = 0.0
    min_snr_gamma: float | None = None
    tau: float = 1.0  # softmax temperature of the soft caption
    gumbel: bool = False  # straight-through Gumbel-softmax instead of the plain softmax
    t_max: int | None = None  # text cycle only on rows whose timestep is below t_max
    cycle_grads: str = "own"  # own: each cycle updates only the model it regularizes | both
    bridge_fallback: str = "pieces"  # unmatched captioner tokens: pieces | unk | drop
    # A control, not a method: the image cycle scores each soft caption by how well it denoises the
    # next item's image (the batch rolled by one), so it carries nothing about its own image.
    i2t2i_mismatch: bool = False
    # Unpaired data (data.unpaired.images / texts; recon_ft/method/unpaired.py)
    lambda_img_unpaired: float = 0.0  # image cycle on images without captions: trains the captioner
    lambda_txt_unpaired: float = 0.0  # text cycle on captions without images: trains the generator
    unpaired_image_mode: str = "ranked"  # soft | ranked | self_train (the control: no generator) | oracle
    unpaired_rank_k: int = 4  # ranked: sampled candidates besides the beam caption
    unpaired_rank_draws: int = 4  # ranked: shared (t, noise) draws scoring each candidate
    unpaired_caption_top_p: float = 0.9  # nucleus sampling of the captioner's own captions
    unpaired_caption_max_length: int | None = None  # null: the captioner's own generation length
    unpaired_text_sampling_steps: int = 10  # DDIM steps sampling the text cycle's image
    unpaired_text_grad_steps: int = 1  # K: the gradient flows through the last K of them
    unpaired_text_guidance: float | None = None  # null: the generator's own guidance scale

    @classmethod
    def coerce(cls, cfg) -> "LossConfig":
        if isinstance(cfg, cls):
            return cfg
        out = dataclass_from(cls, cfg, "loss")
        if out.schedule not in ("joint", "alternate"):
            raise ValueError(f"loss.schedule: expected joint or alternate, got {out.schedule!r}")
        if out.cycle_grads not in ("own", "both"):
            raise ValueError(f"loss.cycle_grads: expected own or both, got {out.cycle_grads!r}")
        if out.unpaired_image_mode not in IMAGE_MODES:
            raise ValueError(f"loss.unpaired_image_mode: expected one of {IMAGE_MODES}, got {out.unpaired_image_mode!r}")
        out.check_ranges()
        return out

    def check_ranges(self) -> None:
        for name in ("w_cap", "w_gen", "lambda_img", "lambda_txt", "lambda_img_unpaired", "lambda_txt_unpaired"):
            expect(getattr(self, name) >= 0, f"loss.{name}", ">= 0", getattr(self, name))
        for name in ("unpaired_rank_k", "unpaired_rank_draws", "unpaired_text_sampling_steps",
                     "unpaired_text_grad_steps"):
            expect(getattr(self, name) >= 1, f"loss.{name}", ">= 1", getattr(self, name))
        expect(self.unpaired_text_grad_steps <= self.unpaired_text_sampling_steps, "loss.unpaired_text_grad_steps",
               f"<= loss.unpaired_text_sampling_steps ({self.unpaired_text_sampling_steps})",
               self.unpaired_text_grad_steps)
        expect(0 < self.unpaired_caption_top_p <= 1, "loss.unpaired_caption_top_p", "in (0, 1]",
               self.unpaired_caption_top_p)
        expect(0 <= self.label_smoothing < 1, "loss.label_smoothing", "in [0, 1)", self.label_smoothing)
        expect(self.tau > 0, "loss.tau", "> 0", self.tau)
        expect(self.min_snr_gamma is None or self.min_snr_gamma > 0, "loss.min_snr_gamma", "> 0 or null",
                self.min_snr_gamma)
        expect(self.t_max is None or self.t_max > 0, "loss.t_max", "> 0 or null", self.t_max)

    def weights(self, batch_idx: int = 0) -> dict[str, float]:
        w = {"cap": self.w_cap, "gen": self.w_gen, "i2t2i": self.lambda_img, "t2i2t": self.lambda_txt,
             "i2t2i_unpaired": self.lambda_img_unpaired, "t2i2t_unpaired": self.lambda_txt_unpaired}
        if self.schedule == "alternate":
            keep = ("gen", "t2i2t", "t2i2t_unpaired") if batch_idx % 2 == 0 else ("cap", "i2t2i", "i2t2i_unpaired")
            w = {k: (v if k in keep else 0.0) for k, v in w.items()}
        return w


def compute_losses(
    captioner,
    generator,
    bridge,
    batch: dict,
    cfg: LossConfig,
    batch_idx: int = 0,
    rng: torch.Generator | None = None,
    cache: FrozenCache | None = None,
) -> dict[str, torch.Tensor]:
    """Named losses of one batch: `loss` (the weighted total), `loss_<term>` per computed term and
    `bridge_mass` (share of the soft caption's probability mass on exactly matched tokens).

    `rng` draws the latent sample, timesteps and noise: the trainer passes one seeded by the batch's
    position (exact resume), validation a fixed one (comparable losses). `cache` (training only)
    looks up the VAE posteriors of `batch["id"]` and the text-encoder states of the captions
    instead of recomputing them, where it holds them (recon_ft.method.frozen_cache).
    """
    w = cfg.weights(batch_idx)
    captions = batch["caption"]
    image_gen = batch["image_gen"]
    device = image_gen.device
    out: dict[str, torch.Tensor] = {}
    critic = cfg.cycle_grads == "own"

    if w["cap"] or w["i2t2i"] or w["t2i2t"]:
        tokens = captioner.tokenize(captions, device)
    if w["cap"] or w["i2t2i"]:
        logits = captioner.logits(batch["image_cap"], tokens)  # (B, L, V_C)
        if w["cap"]:
            out["loss_cap"] = L.caption_loss(logits, tokens.labels, cfg.label_smoothing)

    if w["gen"] or w["i2t2i"] or w["t2i2t"]:
        with torch.no_grad():
            if cache is not None and cache.enabled("latents"):
                moments = cache.lookup(
                    "latents", _ids(batch), lambda rows: generator.encode_moments(image_gen[rows]), device
                )
            else:
                moments = generator.encode_moments(image_gen)  # (B, 2C, h, w), frozen VAE
        zt, t, alpha_bar, target, snr_w = noised_latents(generator, moments, rng, cfg.min_snr_gamma)  # zt (B, C, h, w)

    if w["gen"] or w["t2i2t"]:
        if cache is not None and cache.enabled("text_states"):
            cond = cache.lookup(
                "text_states",
                captions,
                lambda rows: generator.encode_text(generator.tokenize([captions[i] for i in rows], device)),
                device,
            )
        else:
            cond = generator.encode_text(generator.tokenize(captions, device))  # (B, 77, D), or SDXL's structure
        pred = generator.denoise(zt, t, cond)  # (B, 4, h, w)
        if w["gen"]:
            out["loss_gen"] = L.generation_loss(pred, target, snr_w)

    if w["i2t2i"]:
        noised = (zt, t, target, snr_w)
        if cfg.i2t2i_mismatch:
            noised = tuple(x.roll(1, dims=0) if x is not None else None for x in noised)  # row b: item b-1
        out["loss_i2t2i"], probs, caption_mask = soft_caption_denoising(
            captioner, generator, bridge, logits, tokens, *noised, cfg, rng, critic
        )
        out["bridge_mass"] = bridge.mass_coverage(probs.detach(), caption_mask)

    if w["t2i2t"]:
        # Without t_max every row takes part: nothing to select, nothing read on the host. With it,
        # which rows qualify is known on the device only: their indices are read once (a host sync
        # on a GPU) and serve every selection, rather than a boolean mask per tensor.
        if cfg.t_max:
            rows = torch.nonzero(t < cfg.t_max).squeeze(1)  # (b',)
            zt_c, pred_c, alpha_c, sub = zt[rows], pred[rows], alpha_bar[rows], tokens.select(rows)
        else:
            zt_c, pred_c, alpha_c, sub = zt, pred, alpha_bar, tokens
        if len(zt_c):
            z0_hat = L.predict_x0(zt_c, pred_c, alpha_c, generator.prediction_type)
            x_hat = generator.decode_latents(z0_hat).clamp(-1, 1)  # (b', 3, H, W)
            logits_hat = captioner.logits(captioner.preprocess(x_hat), sub, critic=critic)
            out["loss_t2i2t"] = L.text_cycle_loss(logits_hat, sub.labels, cfg.label_smoothing)
        else:  # no row qualifies this batch: a zero that still touches the graph (DDP needs that)
            out["loss_t2i2t"] = pred.sum() * 0.0

    if w["i2t2i_unpaired"] and "unpaired_images" in batch:
        if len(batch["unpaired_images"]["id"]):
            out.update(image_cycle_unpaired(captioner, generator, bridge, batch["unpaired_images"], cfg, rng, critic))
        else:  # every image this batch drew was bad: a zero on the captioner's adapters, as DDP's other ranks
            out["loss_i2t2i_unpaired"] = sum(p.sum() for p in captioner.parameters() if p.requires_grad) * 0.0
    if w["t2i2t_unpaired"] and batch.get("unpaired_texts"):
        out["loss_t2i2t_unpaired"] = text_cycle_unpaired(captioner, generator, batch["unpaired_texts"], cfg, rng,
                                                         critic=critic)

    out["loss"] = sum(w[name[5:]] * value for name, value in out.items() if name.startswith("loss_"))
    return out


def _ids(batch: dict) -> list:
    ids = batch.get("id")
    if ids is None or len(ids) != len(batch["caption"]):
        raise ValueError("frozen_cache.latents: batches need an 'id' per sample (the data module's batches have one)")
    return list(ids)
