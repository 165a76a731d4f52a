"""lrsweep's Hydra sweeper plugin: `hydra/sweeper=optuna`, an Optuna ask-and-tell search (see optuna_sweeper)."""
