#!/usr/bin/env bash
# Set up (if needed) and run the end-to-end demo. Extra arguments go to `lerf-ros demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/lerf-ros" demo "$@"
