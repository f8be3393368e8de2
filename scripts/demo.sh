#!/usr/bin/env bash
# Starts a local Postgres cluster and shardgate on 127.0.0.1:6432 (until Ctrl-C).
# Installs missing packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo run --release --locked -p shardgate -- demo "$@"
