"""Runs one lrsweep experiment per Hydra job: `python train.py -m schedule=linear,constant`."""

import hydra
from omegaconf import DictConfig

from lrsweep import backend, errors, identity, schema

identity.register_resolvers()  # before Hydra composes conf/config.yaml, which uses them


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    with errors.reported():  # a bad value or an unusable store: one line naming it, exit status 1
        errors.as_config_error(schema.check, cfg)  # the declared ranges, before Keras even starts
        backend.select(cfg.backend, cfg.threads)  # before Keras is imported
        from lrsweep import experiment, range_test

        value = experiment.run(cfg)
    range_test.print_single_run(cfg)  # a range test run alone (no -m): its suggested LR bounds
    return value


if __name__ == "__main__":
    main()
