#!/usr/bin/env bash
# Set-up on a fresh machine: the Python environment (.venv) and the local cluster's binaries.
#   hack/setup.sh
# Needs Python 3.11 and Go >= 1.26 on PATH; reaches only PyPI and the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3.11}
command -v "$py" >/dev/null 2>&1 || py=python3
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
  || { echo "setup: Python 3.11 is required (found $("$py" --version 2>&1))" >&2; exit 1; }

echo "[setup] Python environment in .venv"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,plot,worker,router,cluster]'
if [ -f hack/sglang-parser-requirements.txt ]; then
  echo "[setup] SGLang's argument parser (no GPU dependencies)"
  .venv/bin/python -m pip install -q --no-deps -r hack/sglang-parser-requirements.txt
fi

echo "[setup] local cluster binaries (etcd, Kubernetes, kwok, kubectl, helm) from the Go module proxy"
hack/build-binaries.sh
echo "[setup] done"
