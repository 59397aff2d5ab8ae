"""Joint cycle-reconstruction finetuning.  python train.py [overrides]  (see conf/train.yaml)"""

import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning
# threads slow every step down several times. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from recon_ft.cli import run_main  # noqa: E402


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from recon_ft.training.run import objective, train

    # A sweeper (hparams_search=optuna) optimizes the value returned here: cfg.optimized_metric.
    return run_main(lambda c: objective(c, train(c)), cfg)


if __name__ == "__main__":
    main()
