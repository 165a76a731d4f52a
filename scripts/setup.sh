#!/usr/bin/env bash
# Sets lrsweep up on a fresh Debian machine: Fashion-MNIST from Debian's package, a venv, the project with
# its test tools (pytest, ruff, the JAX backend). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
  $sudo apt-get install -y dataset-fashion-mnist \
    || { $sudo apt-get update && $sudo apt-get install -y dataset-fashion-mnist; } \
    || echo "warning: could not install dataset-fashion-mnist; set LRSWEEP_DATA_DIR to a folder with the IDX files" >&2
fi

# PostgreSQL for the tracking server (scripts/tracking_server.sh) and its tests.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "Installing PostgreSQL (Debian package postgresql)..."
  $sudo apt-get install -y postgresql || { $sudo apt-get update && $sudo apt-get install -y postgresql; } \
    || echo "warning: could not install postgresql; scripts/tracking_server.sh and its tests need it" >&2
fi

# SLURM and munge for scripts/slurm_cluster.py (a one-node SLURM cluster of this machine) and its tests.
if ! command -v sbatch >/dev/null 2>&1 || ! [ -x /usr/sbin/munged ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "Installing SLURM and munge (Debian packages slurm-wlm, munge)..."
  $sudo apt-get install -y slurm-wlm munge || { $sudo apt-get update && $sudo apt-get install -y slurm-wlm munge; } \
    || echo "warning: could not install slurm-wlm and munge; the SLURM tests will be skipped" >&2
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# A venv made before lrsweep had its own Optuna sweeper may still hold hydra-optuna-sweeper, whose plugin of the same
# name (hydra/sweeper=optuna) would compete with it.
.venv/bin/python -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
echo "lrsweep is set up in .venv"
