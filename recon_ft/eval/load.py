"""Rebuild the captioner + generator pair to evaluate.

From a training run (`run_dir=<output dir>`, or a checkpoint inside one):
  1. compose the models from the run's resolved `config.yaml`;
  2. the base weights from `base/captioner` / `base/generator` when the run started from random
     init (the run saved them), else from the `pretrained` source the run used;
  3. the trained weights: `adapters/captioner` with peft (`PeftModel.from_pretrained`),
     `adapters/generator` with diffusers' `load_lora_weights` (`trainable_weights.safetensors`
     for `adapter.mode: full`) or, from a Lightning checkpoint (`ckpt=`, or `run_dir=` naming a
     .ckpt file), its state_dict of trainable parameters.
Base models (no run): the eval config's `captioner` / `generator` groups, adapters off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recon_ft.models.adapters import load_full_weights
from recon_ft.models.lora import AdapterSpec

log = logging.getLogger(__name__)

FROZEN = {"mode": "frozen"}


@dataclass
class Pair:
    captioner: torch.nn.Module
    generator: torch.nn.Module
    captioner_cfg: DictConfig  # the config the models were built from (the run's, or the eval's groups)
    generator_cfg: DictConfig
    source: dict = field(default_factory=dict)  # what was loaded from where (for the report)

    @property
    def tiny_generator(self) -> bool:
        return bool(self.generator_cfg.get("tiny")) and not self.generator_cfg.get("pretrained")


def load_pair(cfg: DictConfig) -> Pair:
    """The pair an evaluation config asks for: `run_dir` (+ optional `ckpt`) or the model groups."""
    if cfg.get("run_dir"):
        return load_run(cfg.run_dir, ckpt=cfg.get("ckpt"))
    if cfg.get("ckpt"):
        raise ValueError("ckpt= needs run_dir= (the training run the checkpoint belongs to), or pass the "
                         "checkpoint itself as run_dir=<path>.ckpt")
    return load_base(cfg.captioner, cfg.generator)


def load_base(captioner_cfg: DictConfig, generator_cfg: DictConfig) -> Pair:
    captioner = _instantiate(captioner_cfg, adapter=FROZEN)
    generator = _instantiate(generator_cfg, unet_adapter=FROZEN, text_encoder_adapter=FROZEN)
    source = {"captioner": _describe(captioner_cfg), "generator": _describe(generator_cfg), "adapters": None}
    return Pair(_frozen(captioner), _frozen(generator), captioner_cfg, generator_cfg, source)


def find_run_dir(checkpoint: Path) -> Path:
    """The training run a checkpoint belongs to: the nearest folder above it holding config.yaml."""
    for folder in checkpoint.resolve().parents:
        if (folder / "config.yaml").is_file():
            return folder
    raise FileNotFoundError(f"{checkpoint}: no config.yaml in any folder above it (expected the checkpoint "
                            "inside a training run's output, e.g. <run>/checkpoints/last.ckpt)")


def resolve_checkpoint(run_dir: Path, ckpt: str | None) -> Path | None:
    if ckpt is None:
        return None
    for path in (Path(ckpt), run_dir / "checkpoints" / ckpt, run_dir / "checkpoints" / f"{ckpt}.ckpt"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"ckpt={ckpt}: no such checkpoint (looked for it as a path and in {run_dir}/checkpoints)")


def load_run(path: str | Path, ckpt: str | None = None) -> Pair:
    """The trained pair of a training run's output dir, or of a checkpoint (.ckpt) inside one."""
    path = Path(path)
    if path.is_file():
        run_dir, checkpoint = find_run_dir(path), path
    elif path.is_dir():
        run_dir, checkpoint = path, None
    else:
        raise FileNotFoundError(f"run_dir={path}: no such directory or checkpoint file")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}/config.yaml: file not found (expected a training run's output dir, "
                                "written by train.py)")
    checkpoint = checkpoint or resolve_checkpoint(run_dir, ckpt)
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    for key in ("captioner", "generator"):
        if key not in run_cfg:
            raise ValueError(f"{run_dir}/config.yaml has no '{key}' section: not a recon_ft training config")
    cap_cfg, gen_cfg = run_cfg.captioner, run_cfg.generator
    cap_spec = AdapterSpec.coerce(cap_cfg.get("adapter"))
    unet_spec = AdapterSpec.coerce(gen_cfg.get("unet_adapter"))
    te_spec = AdapterSpec.coerce(gen_cfg.get("text_encoder_adapter"))
    cap_base = _base_override(cap_cfg, run_dir / "base" / "captioner", "config.json")
    gen_base = _base_override(gen_cfg, run_dir / "base" / "generator", "model_index.json")

    if checkpoint is not None:
        # The run's adapter layout (fresh adapters), then the checkpoint's trained values.
        captioner = _instantiate(cap_cfg, **cap_base)
        generator = _instantiate(gen_cfg, **gen_base)
        state = load_checkpoint(checkpoint)
        if "state_dict" not in state:
            raise ValueError(f"{checkpoint}: not a Lightning checkpoint (no state_dict)")
        for prefix, model in (("captioner.", captioner), ("generator.", generator)):
            _load_trainable(model, state["state_dict"], prefix, checkpoint)
        adapters = {"checkpoint": str(checkpoint), "global_step": state.get("global_step")}
    else:
        captioner = _instantiate(cap_cfg, adapter=FROZEN, **cap_base)
        generator = _instantiate(gen_cfg, unet_adapter=FROZEN, text_encoder_adapter=FROZEN, **gen_base)
        _load_captioner_adapter(captioner, cap_spec, run_dir / "adapters" / "captioner")
        _load_generator_adapter(generator, unet_spec, te_spec, run_dir / "adapters" / "generator")
        adapters = {"dir": str(run_dir / "adapters")}
    source = {
        "run_dir": str(run_dir),
        "captioner": cap_base.get("pretrained") or _describe(cap_cfg),
        "generator": gen_base.get("pretrained") or _describe(gen_cfg),
        "adapters": adapters,
    }
    return Pair(_frozen(captioner), _frozen(generator), cap_cfg, gen_cfg, source)


# ------------------------------------------------------------------------------------ helpers


def load_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint's contents, unpickled with `weights_only=True`: tensors, numbers,
    strings and containers only, so a checkpoint from elsewhere cannot run code when loaded (the
    project's own checkpoints hold nothing else). One error naming the file otherwise."""
    import pickle

    from recon_ft.training.checks import check_checkpoint_file

    check_checkpoint_file(path)  # present and a whole torch.save archive
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is long and suggests weights_only=False; keep its one line naming the object
        what = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
        raise ValueError(f"{path}: refused: it holds objects other than tensors and plain data, which "
                         f"could run code when loaded. {what}".rstrip()) from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a Lightning checkpoint (a {type(state).__name__}, not a dict)")
    return state


def _instantiate(model_cfg: DictConfig, **overrides):
    """Build a model from its group config, for evaluation: nothing saved, no checkpointing."""
    overrides = {"save_base_to": None, "gradient_checkpointing": False, **overrides}
    overrides = {k: v for k, v in overrides.items() if k in model_cfg or v is not None}
    return instantiate(model_cfg, **overrides)


def _base_override(model_cfg: DictConfig, base_dir: Path, marker: str) -> dict:
    """Where the run's base weights come from: its `pretrained` source, else the base it saved."""
    if model_cfg.get("pretrained"):
        return {}
    if (base_dir / marker).is_file():
        return {"pretrained": str(base_dir), "tiny": None, "arch": None}
    log.warning("%s: not found; rebuilding the random-init base from the run's config (identical only if "
                "built with the same init seed and library versions)", base_dir)
    return {}


def _describe(model_cfg: DictConfig) -> str:
    if model_cfg.get("pretrained"):
        return str(model_cfg.pretrained)
    if model_cfg.get("arch"):
        return f"random-init {model_cfg.arch} architecture"
    return f"random-init tiny {OmegaConf.to_container(model_cfg.get('tiny') or {})}"


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    return model.requires_grad_(False).eval()


def _load_trainable(model: torch.nn.Module, state: dict, prefix: str, checkpoint: Path) -> None:
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(sub))
    if missing:
        raise ValueError(f"{checkpoint}: lacks {len(missing)} trainable parameters of the {prefix[:-1]} "
                         f"(e.g. {missing[0]}): was it written with the run's adapter configuration?")
    unexpected = sorted(set(sub) - set(model.state_dict()))
    if unexpected:
        raise ValueError(f"{checkpoint}: parameters {unexpected[:2]} do not belong to the run's {prefix[:-1]}")
    model.load_state_dict(sub, strict=False)


def _load_captioner_adapter(captioner, spec: AdapterSpec, directory: Path) -> None:
    if spec.mode == "frozen":
        return
    if spec.mode == "full":
        if not load_full_weights(captioner.model, directory):
            raise FileNotFoundError(f"{directory}/trainable_weights.safetensors: file not found (adapter.mode: full)")
        return
    if not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{directory}/adapter_config.json: file not found (the run's peft adapter; "
                                "or evaluate a checkpoint with ckpt=last)")
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(captioner.model, str(directory), is_trainable=False)
    captioner.peft_model = peft_model
    captioner.model = peft_model.get_base_model()


def _load_generator_adapter(generator, unet_spec: AdapterSpec, te_spec: AdapterSpec, directory: Path) -> None:
    if "full" in (unet_spec.mode, te_spec.mode) and not load_full_weights(generator, directory):
        raise FileNotFoundError(f"{directory}/trainable_weights.safetensors: file not found (adapter mode full)")
    specs = {name: unet_spec if name == "unet" else te_spec for name in generator.adapter_parts()}
    lora = [(m, specs[name]) for name, m in generator.adapter_parts().items() if specs[name].mode == "lora"]
    if not lora:
        return
    weights = directory / "pytorch_lora_weights.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: file not found (the run's diffusers LoRA; or evaluate a checkpoint "
                                "with ckpt=last)")
    generator.pipeline().load_lora_weights(str(directory), adapter_name="trained")
    # diffusers infers alpha = rank when the file has no adapter metadata: the scale comes from the run's
    # config instead, so alpha != r loads right too.
    from peft.tuners.lora import LoraLayer

    for module, spec in lora:
        for layer in module.modules():
            if isinstance(layer, LoraLayer) and "trained" in layer.scaling:
                layer.scaling["trained"] = spec.alpha / spec.r
