#!/usr/bin/env bash
# Stop the SeaweedFS started by start.sh DATA_DIR. Succeeds if nothing runs there.
# Usage: stop.sh DATA_DIR
set -euo pipefail
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
[[ $# -eq 1 ]] || { echo "usage: $0 DATA_DIR" >&2; exit 2; }
pidfile="$1/weed.pid"
[[ -f $pidfile ]] || exit 0
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null && grep -qa weed "/proc/$pid/cmdline" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  s3_log "stopped pid $pid"
fi
rm -f "$pidfile"
