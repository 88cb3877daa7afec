#!/usr/bin/env bash
# Stop the Cassandra started by start.sh DATA_DIR. Sends SIGTERM (Cassandra drains and
# exits), waits up to SELFIE_CQL_STOP_TIMEOUT seconds (default 60), then SIGKILL.
# Usage: stop.sh DATA_DIR [--kill]   Succeeds if nothing is running there.
#   --kill: SIGKILL at once (no drain; fine for a throwaway DATA_DIR, about 5 s faster).
set -euo pipefail
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
[[ $# -ge 1 && $# -le 2 && ${2:---kill} == --kill ]] || { echo "usage: $0 DATA_DIR [--kill]" >&2; exit 2; }
pidfile="$1/cassandra.pid"
[[ -f $pidfile ]] || { cql_log "no $pidfile: nothing to stop"; exit 0; }
pid=$(cat "$pidfile")
if ! kill -0 "$pid" 2>/dev/null || ! grep -qa CassandraDaemon "/proc/$pid/cmdline" 2>/dev/null; then
  cql_log "pid $pid is not a running Cassandra; removing stale $pidfile"
  rm -f "$pidfile"; exit 0
fi
if [[ ${2:-} == --kill ]]; then
  kill -KILL "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"; cql_log "killed pid $pid"; exit 0
fi
kill -TERM "$pid"
for _ in $(seq 1 $((${SELFIE_CQL_STOP_TIMEOUT:-60} * 5))); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; cql_log "stopped pid $pid"; exit 0; }
  sleep 0.2
done
cql_log "pid $pid still alive after SIGTERM; sending SIGKILL"
kill -KILL "$pid" 2>/dev/null || true
sleep 0.5
rm -f "$pidfile"
