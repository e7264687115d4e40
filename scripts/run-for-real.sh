#!/usr/bin/env bash
# Runs dcpipe for real on a nats-server: two institutions and the central bank's settlement,
# every stage its own process, each given only its own key; then one payment and its outcome, and the audit of the run.
# The steps of README.md's "Running it for real" and "Auditing the record", which quote the
# commands below.
#
#   scripts/run-for-real.sh nats://127.0.0.1:4222 WORKDIR
#
# WORKDIR must be new or empty; it receives the PKI, the ledgers and the workers' logs.
# DCPIPE_BIN names the dcpipe binary (default: dcpipe on PATH). Exits 0 once the payment
# completed, its outcome was read back and the audit of the run reconciled; the workers are
# stopped on exit.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 NATS_URL WORKDIR" >&2
  exit 2
fi
BUS=$1
if [ -n "${DCPIPE_BIN:-}" ]; then
  # On PATH as itself (not a shell function), so that each worker's pid is its own.
  bin_dir=$(mktemp -d)
  ln -s "$(realpath "$DCPIPE_BIN")" "$bin_dir/dcpipe"
  PATH="$bin_dir:$PATH"
fi
mkdir -p "$2"
cd "$2"

workers=()
stop_workers() {
  for pid in "${workers[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${bin_dir:-}" ]; then
    rm -rf "$bin_dir"
  fi
}
trap stop_workers EXIT

# 1. Provision the bus: every stream of the protocol (idempotent; --dry-run shows the plan).
dcpipe bus init --bus "$BUS" --institutions oi01,oi02

# 2. Keys, one directory per party: root/ (offline), settlement/, institutions/<oi>/ca/,
#    institutions/<oi>/signer/, wallets/<id>/ (for terminals), and trust/ (certificates only).
dcpipe pki init --out pki --institutions 2 --wallets 4

# 3. Open the wallets: one file per institution, JSON lines (docs/OPERATIONS.md).
cat > wallets-oi01.jsonl <<'EOF'
{"wallet_id": "w-oi01-000001", "tier": 4, "opening_balance_fen": 500000}
{"wallet_id": "w-oi01-000002", "tier": 2, "opening_balance_fen": 2000000, "password_free_limit_fen": 50000}
EOF
cat > wallets-oi02.jsonl <<'EOF'
{"wallet_id": "w-oi02-000001", "tier": 4, "opening_balance_fen": 500000}
{"wallet_id": "w-oi02-000002", "tier": 4, "opening_balance_fen": 0}
EOF
dcpipe wallets open --institution oi01 --ledger sqlite://ledgers --file wallets-oi01.jsonl
dcpipe wallets open --institution oi02 --ledger sqlite://ledgers --file wallets-oi02.jsonl

# 4. The workers, each given the trust anchors and its own signer's directory only.
mkdir -p logs
for oi in oi01 oi02; do
  for stage in payer payee commit finalize; do
    dcpipe worker "$stage" --institution "$oi" --bus "$BUS" --ledger sqlite://ledgers --pki pki/trust --key "pki/institutions/$oi/signer" 2> "logs/$stage-$oi.log" &
    workers+=($!)
  done
done
dcpipe worker settlement --bus "$BUS" --ledger sqlite://ledgers --pki pki/trust --key pki/settlement 2> logs/settlement.log &
workers+=($!)

# 5. One payment, made as the two wallets' terminals would, and its outcome read back.
PAYMENT_ID=$(cat /proc/sys/kernel/random/uuid)
dcpipe submit --bus "$BUS" --pki pki/trust --payer pki/wallets/w-oi01-000001 --payee pki/wallets/w-oi02-000001 --amount-fen 12345 --payment-id "$PAYMENT_ID" --timeout 60s
dcpipe tail txn.result.oi01 --bus "$BUS" --payment-id "$PAYMENT_ID" --output json

# 6. The run audited as an auditor would, with the trust anchors only: every record re-verified,
#    the payment's life rebuilt and found in both ledgers (exit 0: no discrepancy).
dcpipe audit --bus "$BUS" --pki pki/trust --ledger sqlite://ledgers --report audit.json
