#!/usr/bin/env bash
# The main job: builds dcpipe and runs its payment demo on the embedded bus with SQLite ledgers.
# Extra arguments go to `dcpipe demo` (e.g. --bus nats://127.0.0.1:4222, --duration 30s).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --build-only
exec cargo run --release --locked --quiet -- demo "$@"
