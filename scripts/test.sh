#!/usr/bin/env bash
# The test command: installs what is missing (scripts/setup.sh), then checks formatting and
# lints, then runs every test of the workspace against real servers that the tests start
# themselves (nats-server, tansu, PostgreSQL, Prometheus) on free ports, then a short run of
# every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cache="${DCPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcpipe}"
# shellcheck disable=SC1091
source "$cache/env"

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi

# Fuzzing: every target of fuzz/ briefly from its committed corpus (scripts/fuzz.sh: the build
# is kept in the cache, so only the first run on a machine builds everything).
CARGO_TARGET_DIR="$cache/fuzz-target" scripts/fuzz.sh short
