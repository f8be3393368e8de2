#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against real
# Postgres clusters started by the harness. Installs missing packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# Clusters start several times faster on tmpfs.
if [ -z "${SHARDGATE_HARNESS_DIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  shm_kb=$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')
  if [ "${shm_kb:-0}" -gt 2000000 ]; then
    export SHARDGATE_HARNESS_DIR=/dev/shm/shardgate-harness
  fi
fi
exec cargo test --workspace --locked "$@"
