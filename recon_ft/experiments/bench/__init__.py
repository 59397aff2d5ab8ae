"""The joint objective's throughput and memory, phase by phase (run: python -m recon_ft.experiments.bench)."""
