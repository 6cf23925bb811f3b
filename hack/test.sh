#!/usr/bin/env bash
# The tests, as CI runs them: lint, types, import layering, then every test tier.
#   hack/test.sh [pytest arguments]      e.g. hack/test.sh -m "not cluster"
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
[ -x $bin/pytest ] || { echo "test: run hack/setup.sh first" >&2; exit 1; }

echo "[test] ruff"; $bin/ruff check .
echo "[test] mypy (strict on the packages)"; $bin/mypy
echo "[test] import layering"; $bin/lint-imports
# In CI a missing cluster binary is a failure, not a skip.
if [ "${CI:-}" = "true" ]; then export MIMO_REQUIRE_CLUSTER=1; fi
echo "[test] pytest"; exec $bin/pytest "$@"
