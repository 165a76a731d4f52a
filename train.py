"""Runs one lrsweep experiment per Hydra job: `python train.py -m schedule=linear,constant`."""

import hydra
from omegaconf import DictConfig

from lrsweep import backend


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    backend.select(cfg.backend, cfg.threads)  # before Keras is imported
    from lrsweep import experiment

    return experiment.run(cfg)


if __name__ == "__main__":
    main()
