#!/usr/bin/env bash
# A tracking server for many writers: PostgreSQL + `mlflow server` on 127.0.0.1:5000 (scripts/tracking_server.py).
# Sets up what it needs (PostgreSQL, the venv with psycopg2), then runs it until Ctrl-C. Options: --port, --host,
# --data (default tracking-server/), --workers; e.g. `bash scripts/tracking_server.sh --port 5001`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
.venv/bin/python -m pip install --quiet -e ".[server]"
exec .venv/bin/python scripts/tracking_server.py "$@"
