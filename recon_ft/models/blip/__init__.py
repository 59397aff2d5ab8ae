"""BLIP base / large (Salesforce/blip-image-captioning-*): wrapper and builder in model.py, the
published and tiny configs in configs.py."""

from recon_ft.models.blip.model import BlipCaptioner, build_blip

__all__ = ["BlipCaptioner", "build_blip"]
