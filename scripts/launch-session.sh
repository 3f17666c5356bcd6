#!/usr/bin/env bash
# Launches a command as a psm session: starts the services
# (start-services.sh, output on stderr), then runs the command under
# `psm session run`, which registers the session, exports PSM_SESSION_ID,
# PSM_PROJECT and PSM_ROOT, and cleans the session's services up when the
# command ends or the wrapper gets SIGINT, SIGTERM or SIGHUP.
#
# Usage: scripts/launch-session.sh [--root DIR] [-v] [--] CMD [ARGS...]
# Leading psm global options (--root DIR, --root=DIR, -v...) are passed to
# psm; everything from CMD on is the command, untouched.
#
# `psm session run` runs as a child, never exec'd (the seed's launcher
# exec'ed away and its cleanup trap never ran); this script exits with the
# command's status.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage="usage: $0 [--root DIR] [-v] [--] CMD [ARGS...]"

global=()
while (($# > 0)); do
  case "$1" in
    --root)
      if (($# < 2)); then echo "$usage" >&2; exit 2; fi
      global+=("$1" "$2")
      shift 2
      ;;
    --root=* | -v | -vv | -vvv | --verbose)
      global+=("$1")
      shift
      ;;
    --)
      shift
      break
      ;;
    *) break ;;
  esac
done
if (($# == 0)); then
  echo "$usage" >&2
  exit 2
fi

"$here/start-services.sh" ${global[@]+"${global[@]}"} >&2
# start-services.sh found or built it: on PATH, else the release build.
psm="$(command -v psm || echo "$here/../target/release/psm")"

status=0
"$psm" ${global[@]+"${global[@]}"} session run -- "$@" || status=$?
exit "$status"
