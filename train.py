"""Runs one lrsweep experiment per Hydra job: `python train.py -m schedule=linear,constant`."""

import hydra
from omegaconf import DictConfig

from lrsweep.config import schema
from lrsweep.core import backend, errors, identity, secrets
from lrsweep.ml.range_test import is_range_test

identity.register_resolvers()  # before Hydra composes conf/config.yaml, which uses them
secrets.redact_logs()  # a password in tracking.uri never reaches a log line (Hydra's own too)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    secrets.redact_logs()  # in a launcher's worker process too
    with errors.reported():  # a bad value or an unusable store: one line naming it, exit status 1
        errors.as_config_error(schema.check, cfg)  # the declared ranges, before Keras even starts
        backend.select(cfg.backend, cfg.threads)  # before Keras is imported
        from lrsweep.run import experiment
        from lrsweep.sweep.hydra_adapter import failures_in_one_line

        with failures_in_one_line():  # a divergence: one line from Hydra, no traceback
            value = experiment.run(cfg)
    if is_range_test(cfg):  # a range test run alone (no -m): its suggested LR bounds
        from lrsweep.analysis.range_test import print_single_run  # its analysis (scipy.stats) only when needed

        print_single_run(cfg)
    return value


if __name__ == "__main__":
    main()
