"""Evaluation of a captioner + generator pair.  python eval.py [run_dir=<training run>] [overrides]
(see conf/eval.yaml; outputs in docs/metrics.md)"""

import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning
# threads made this evaluation up to 10x slower. Set before torch is imported (the variable wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from recon_ft.cli import run_main  # noqa: E402


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from recon_ft.eval.pipeline import evaluate

    run_main(evaluate, cfg)


if __name__ == "__main__":
    main()
