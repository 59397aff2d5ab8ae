"""The cycle-term study: every configuration x seed finetuned and evaluated, then aggregated into a
report (python -m recon_ft.experiments.study; conf/study/cycle.yaml)."""
