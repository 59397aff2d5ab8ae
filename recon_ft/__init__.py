"""recon_ft: joint cycle-reconstruction finetuning of image captioners and text-to-image models."""

__version__ = "0.1.0"
