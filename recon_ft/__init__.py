"""recon_ft: joint cycle-reconstruction finetuning of image captioners and text-to-image models."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """`${zoo:captioner}` / `${zoo:generator}` in a config: the path of a synthetic zoo model,
    built on first use (recon_ft.zoo). Registered on import, before Hydra resolves anything."""
    from omegaconf import OmegaConf

    def zoo(part: str) -> str:
        from recon_ft.zoo.cache import zoo_part

        return zoo_part(part)

    if not OmegaConf.has_resolver("zoo"):
        OmegaConf.register_new_resolver("zoo", zoo)


_register_resolvers()
