#!/usr/bin/env bash
# Benchmarks psm (and with --peers supervisord and pm2) on this machine and
# prints a markdown table; without --quick it also rewrites the generated
# sections of docs/benchmarks.md.
#
#   scripts/bench.sh --quick                        # CI smoke run: N=20, one rep, psm only
#   scripts/bench.sh --peers --n 200,1000 --reps 3  # the figures in docs/benchmarks.md
#
# Options are scripts/bench.py's (`scripts/bench.sh --help`). The harness
# ends every process it starts, also when interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."

# --quick asserts nothing about speed, so it uses the debug build that
# `cargo test` has already made (a cold release build takes minutes on two
# cores); every measuring run uses the release build.
for arg in "$@"; do
  if [[ $arg == --quick ]]; then
    cargo build --quiet --bin psm
    exec python3 scripts/bench.py --psm target/debug/psm "$@"
  fi
done
cargo build --release --quiet --bin psm
exec python3 scripts/bench.py "$@"
