#!/usr/bin/env bash
# Coverage-guided fuzzing of dcpipe (cargo fuzz, libFuzzer): fuzz/README.md lists the targets.
#
#   scripts/fuzz.sh short                 # every target briefly, from its committed corpus (CI)
#   scripts/fuzz.sh long [SECONDS] [TARGET...]   # a campaign: each target SECONDS (default 3600)
#   scripts/fuzz.sh campaign [RUNS] [TARGET...]  # each target RUNS executions (default 10 million)
#   scripts/fuzz.sh seed                  # add the protocol's vectors to the corpora
#   scripts/fuzz.sh minimize [TARGET...]  # shrink the committed corpora (cargo fuzz cmin)
#
# short runs each target for FUZZ_SECONDS seconds (default 10: 8 targets, 96 s measured) after
# one build. Installing cargo-fuzz takes about 70 s. The build compiles pipeline/ and all it
# depends on with coverage instrumentation, without the Kafka bus (the pipeline's `kafka`
# feature is off: no librdkafka): 2 min when only dcpipe's crates changed, 22 min from nothing
# on a 2-core machine shared with three other builds, above the 6-minute budget: test.sh keeps
# its build in the cache directory
# so that only the first run on a machine pays it. New inputs found by a short run go to a temporary directory,
# not to the committed corpora; a crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/. long keeps what it finds in fuzz/corpus/TARGET (minimize afterwards).
#
# This machine has the stable toolchain only: cargo fuzz passes nightly flags (-Zsanitizer) to
# rustc, which stable rustc accepts with RUSTC_BOOTSTRAP=1. The sanitizer is AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_fuzz_version="0.13.2"
# Every target, in the order they run.
targets=(decode certificate chain signing_inputs payment_decision clearing_decisions wallet_decisions vehicle_decisions)
# libFuzzer's limits: an input taking longer than timeout seconds is a hang; a process above
# rss_limit_mb is a leak or a blow-up; max_len bounds inputs (a frame is at most 1 MiB, the
# corpora's frames are a few KB).
limits=(-timeout=5 -rss_limit_mb=1024 -max_len=65536)

log() { printf 'fuzz: %s\n' "$*" >&2; }

export RUSTC_BOOTSTRAP=1

ensure_cargo_fuzz() {
  if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    log "installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --quiet
  fi
}

build() {
  log "building the targets"
  cargo fuzz build --release --debug-assertions
}

run() { # TARGET SECONDS CORPUS...
  local target=$1 seconds=$2
  shift 2
  fuzz "$target" -max_total_time="$seconds" "$@"
}

run_executions() { # TARGET RUNS CORPUS...
  local target=$1 runs=$2
  shift 2
  fuzz "$target" -runs="$runs" "$@"
}

fuzz() { # TARGET LIMIT CORPUS...
  local target=$1 limit=$2 output status=0
  shift 2
  output=$(mktemp)
  cargo fuzz run --release --debug-assertions "$target" "$@" -- \
    "${limits[@]}" "$limit" -print_final_stats=1 >"$output" 2>&1 || status=$?
  if [ $status -ne 0 ]; then
    tail -n 60 "$output" >&2
    rm -f "$output"
    log "$target: failed (its input is in fuzz/artifacts/$target/)"
    return 1
  fi
  # The figures the docs record: executions, coverage (cov: edges, ft: features), corpus, RSS.
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|peak_rss_mb)' "$output" |
    sed "s/^/$target: /"
  rm -f "$output"
}

seed() {
  python3 - <<'PY'
import hashlib, json, pathlib
root = pathlib.Path(".")
vectors = json.loads((root / "docs/test-vectors/protocol.json").read_text())
corpus = root / "fuzz/corpus"
def put(target, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
frames = [p.read_bytes() for p in sorted((root / "schemas/testdata").glob("frames*/*.bin"))]
for algorithm in vectors["signed"].values():
    for entry in algorithm.values():
        if "frame" in entry:
            frames.append(bytes.fromhex(entry["frame"]))
certificates = [bytes.fromhex(p["certificate"]) for a in vectors["parties"].values() for p in a.values()]
for frame in frames:
    for target in ["decode", "signing_inputs", "payment_decision", "clearing_decisions",
                   "wallet_decisions", "vehicle_decisions"]:
        put(target, frame)
for certificate in certificates:
    put("certificate", certificate)
    for choice in (0xff, 0x01, 0x10):
        put("chain", bytes([choice]) + certificate)
PY
}

case "${1:-short}" in
  short)
    ensure_cargo_fuzz
    build
    seconds="${FUZZ_SECONDS:-10}"
    for target in "${targets[@]}"; do
      scratch=$(mktemp -d)
      log "$target: ${seconds}s"
      run "$target" "$seconds" "$scratch" "fuzz/corpus/$target"
      rm -rf "$scratch"
    done
    ;;
  long)
    ensure_cargo_fuzz
    build
    seconds="${2:-3600}"
    shift $(( $# > 1 ? 2 : 1 ))
    for target in "${@:-${targets[@]}}"; do
      log "$target: ${seconds}s"
      run "$target" "$seconds" "fuzz/corpus/$target"
    done
    ;;
  campaign)
    ensure_cargo_fuzz
    build
    runs="${2:-10000000}"
    shift $(( $# > 1 ? 2 : 1 ))
    for target in "${@:-${targets[@]}}"; do
      log "$target: $runs executions"
      run_executions "$target" "$runs" "fuzz/corpus/$target"
    done
    ;;
  seed)
    seed
    ;;
  minimize)
    ensure_cargo_fuzz
    shift
    for target in "${@:-${targets[@]}}"; do
      cargo fuzz cmin --release --debug-assertions "$target" "fuzz/corpus/$target" -- "${limits[@]}"
    done
    ;;
  *)
    echo "usage: $0 short | long [SECONDS] [TARGET...] | campaign [RUNS] [TARGET...] | seed | minimize [TARGET...]" >&2
    exit 2
    ;;
esac
