"""BLIP-2 (Salesforce/blip2-opt-2.7b, blip2-flan-t5-xl): wrapper and builder in model.py, the
published and tiny configs in configs.py."""

from recon_ft.models.blip2.model import Blip2Captioner, build_blip2

__all__ = ["Blip2Captioner", "build_blip2"]
