#!/usr/bin/env bash
# Starts psm's services for one root: finds psm (on PATH, else this repo's
# target/release/psm, built with `cargo build --release` if missing), runs the
# pre-start-up checks with repairs (`psm verify --fix`: dead records removed,
# a missing coordinator started), makes sure the coordinator runs (`psm up`)
# and prints `psm status`.
#
# Usage: scripts/start-services.sh [PSM GLOBAL OPTIONS...]   e.g. --root DIR
# Every argument is passed to each psm command as a global option. The root is
# --root, else $PSM_ROOT, else $CODING_REPO, else the current directory.
#
# An explicit start, like `psm up`: it also ends an earlier `psm down` (whose
# mark `verify --fix` respects, with a warning; `up` clears it). Do not run it
# from a login or KeepAlive agent; those run `psm coordinator --respect-down`.
#
# Idempotent: when everything already runs, a second run changes nothing (the
# same coordinator, the same service pids). Exits 1 when a check fails that
# --fix cannot repair; the FAIL lines above say which.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Prints the psm to use; building it goes to stderr so stdout is the path only.
find_psm() {
  if command -v psm >/dev/null 2>&1; then
    command -v psm
    return
  fi
  local built="$repo/target/release/psm"
  if [[ ! -x "$built" ]]; then
    echo "start-services: psm is not on PATH; building $built" >&2
    (cd "$repo" && cargo build --release) >&2
  fi
  printf '%s\n' "$built"
}

psm="$(find_psm)"

# ${args[@]+...}: bash 3.2 (macOS) treats an empty array as unset under set -u.
args=("$@")
if ! "$psm" ${args[@]+"${args[@]}"} verify --fix; then
  echo "start-services: psm verify failed; see the FAIL lines above" >&2
  exit 1
fi
# `up` prints the status table too; the one below is printed once, last.
"$psm" ${args[@]+"${args[@]}"} up >/dev/null
"$psm" ${args[@]+"${args[@]}"} status
