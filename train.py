"""Joint cycle-reconstruction finetuning.  python train.py [overrides]  (see conf/train.yaml)"""

import hydra
from omegaconf import DictConfig

from recon_ft.cli import run_main


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from recon_ft.train import train

    run_main(train, cfg)


if __name__ == "__main__":
    main()
