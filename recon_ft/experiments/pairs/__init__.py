"""The pairing study: which captioner and which generator understand each other (python -m recon_ft.experiments.pairs)."""
