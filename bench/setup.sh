#!/usr/bin/env bash
# Everything bench/compare.py needs beyond .[dev]; safe to run again.
#   bash bench/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 dev.py lint >/dev/null 2>&1 || true  # creates .venv
.venv/bin/python -m pip install --disable-pip-version-check -q -e '.[dev,bench]'
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y wrk >/dev/null || (apt-get update >/dev/null && apt-get install -y wrk >/dev/null)
  else
    sudo apt-get install -y wrk >/dev/null
  fi
fi
wrk --version 2>&1 | head -1 || true
.venv/bin/python -c "import customerio, psutil, matplotlib; print('bench extra: ok')"
