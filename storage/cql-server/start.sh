#!/usr/bin/env bash
# Start a single-node Apache Cassandra (a real CQL server) on 127.0.0.1 for tests.
# Usage: start.sh DATA_DIR [NATIVE_PORT]      (NATIVE_PORT defaults to 9042)
# Prints the server's PID on stdout once a CQL query has actually succeeded.
# Stop it with: stop.sh DATA_DIR   (or kill PID; the PID is also in DATA_DIR/cassandra.pid)
# The same DATA_DIR can be restarted; a fresh DATA_DIR gives a fresh node.
# Environment (all optional):
#   SELFIE_CQL_LIB            jar folder (default ~/.cache/selfie/cql-server/lib); fetched if missing
#   SELFIE_CQL_JAVA           java binary (must be Java 11 or 17)
#   SELFIE_CQL_HEAP           max heap (default 2g);  SELFIE_CQL_STORAGE_PORT (default NATIVE_PORT+1000)
#   SELFIE_CQL_START_TIMEOUT  seconds to wait (default 240);  SELFIE_CQL_JVM_OPTS extra JVM flags
set -euo pipefail
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: $0 DATA_DIR [NATIVE_PORT]" >&2; exit 2; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)
port=${2:-9042}
storage_port=${SELFIE_CQL_STORAGE_PORT:-$((port + 1000))}
# One test run opens ~20 keyspaces of ~35 tables each, plus the prepared-statement
# cache below: 1 GiB of heap ran out after a few runs against one server.
heap=${SELFIE_CQL_HEAP:-2g}
timeout_s=${SELFIE_CQL_START_TIMEOUT:-240}
[[ $port =~ ^[0-9]+$ && $storage_port =~ ^[0-9]+$ ]] || cql_die "ports must be numbers (got $port, $storage_port)"
pidfile="$dir/cassandra.pid"
t0=$EPOCHREALTIME

# Refuse to start twice on one DATA_DIR, or on a port someone else already serves.
if [[ -f $pidfile ]]; then
  old=$(cat "$pidfile" 2>/dev/null || true)
  if [[ -n $old ]] && kill -0 "$old" 2>/dev/null && grep -qa CassandraDaemon "/proc/$old/cmdline" 2>/dev/null; then
    cql_die "a Cassandra (pid $old) is already running on $dir; stop it first: $CQL_HERE/stop.sh $dir"
  fi
  rm -f "$pidfile"
fi
for p in "$port" "$storage_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    cql_die "port $p on 127.0.0.1 is already in use; pick another NATIVE_PORT (storage port = NATIVE_PORT+1000)"
  fi
done

"$CQL_HERE/fetch.sh" >/dev/null
version=$(cat "$CQL_LIB/$CQL_MARKER_NAME")
java=$(cql_find_java)

mkdir -p "$dir"/{data,commitlog,saved_caches,hints,cdc_raw,triggers}
cat >"$dir/cassandra.yaml" <<YAML
# Written by storage/cql-server/start.sh: a single test node on 127.0.0.1.
cluster_name: selfie-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage_port"
listen_address: 127.0.0.1
storage_port: $storage_port
rpc_address: 127.0.0.1
native_transport_port: $port
start_native_transport: true
endpoint_snitch: SimpleSnitch
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
# Every test opens its own keyspace and each store prepares its statements (~8 per
# table): the default cache (10 MiB for a 1 GiB heap) evicts them mid-run.
prepared_statements_cache_size: 128MiB
# Tests create and drop keyspaces often: no snapshots on DROP/TRUNCATE.
auto_snapshot: false
snapshot_before_compaction: false
hinted_handoff_enabled: false
# A fresh single node needs no 4.x wire/sstable compatibility: enable all 5.0 features.
storage_compatibility_mode: NONE
# Generous timeouts: CI has 2 cores and GC pauses must not fail tests.
read_request_timeout: 10000ms
range_request_timeout: 20000ms
write_request_timeout: 10000ms
counter_write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
truncate_request_timeout: 60000ms
request_timeout: 20000ms
YAML
cat >"$dir/logback.xml" <<XML
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/system.log</file>
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level [%thread] %logger{30} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
XML

# Module flags from Cassandra's conf/jvm17-server.options (harmless on Java 11).
jpms=(
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
  --add-exports java.base/sun.nio.ch=ALL-UNNAMED
  --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
  --add-exports java.sql/java.sql=ALL-UNNAMED
  --add-exports java.base/java.lang.ref=ALL-UNNAMED
  --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
  --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
  --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
  --add-opens java.base/java.lang.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
  --add-opens java.base/jdk.internal.math=ALL-UNNAMED
  --add-opens java.base/jdk.internal.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
  --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.io=ALL-UNNAMED
  --add-opens java.base/java.nio=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.math=ALL-UNNAMED
  --add-opens java.base/java.net=ALL-UNNAMED
  --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
)
jvm=(
  -Xms256m "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=300 -XX:+PerfDisableSharedMem
  -XX:-HeapDumpOnOutOfMemoryError -XX:+ExitOnOutOfMemoryError -XX:+UseThreadPriorities
  -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true
  -Dio.netty.tryReflectionSetAccessible=true
  -Dio.netty.allocator.useCacheForAllThreads=true -Dio.netty.allocator.maxOrder=11
)
# jamm measures object sizes for memtables; Cassandra loads it as an agent.
jamm=$(compgen -G "$CQL_LIB/jamm-*.jar" | head -n1 || true)
[[ -n $jamm ]] && jvm+=("-javaagent:$jamm")
props=(
  "-Dcassandra.config=file://$dir/cassandra.yaml"
  "-Dcassandra.storagedir=$dir"
  "-Dcassandra.logdir=$dir"
  "-Dlogback.configurationFile=file://$dir/logback.xml"
  "-Dcassandra-pidfile=$pidfile"
  "-Dcassandra.triggers_dir=$dir/triggers"
  -Dcassandra-foreground=yes
  # Test-only speedups: no gossip settle wait, short ring delay.
  -Dcassandra.skip_wait_for_gossip_to_settle=0
  -Dcassandra.ring_delay_ms=1000
  # SELFIE_CQL_UNSAFE_SYSTEM=1 halves DDL time but schema changes are then lost if the
  # server is killed (SIGKILL) before a flush: keep it off unless nothing restarts.
  ${SELFIE_CQL_UNSAFE_SYSTEM:+-Dcassandra.unsafesystem=true}
  -Dcassandra.superuser_setup_delay_ms=0
)
# No JMX at all: no cassandra.jmx.*.port property, so no port 7199 to collide on.
# SELFIE_CQL_JVM_OPTS is split on spaces on purpose.
# shellcheck disable=SC2206
extra=(${SELFIE_CQL_JVM_OPTS:-})

: >"$dir/system.log"
cql_log "starting Cassandra $version on 127.0.0.1:$port (storage port $storage_port, heap $heap, $java) in $dir"
setsid "$java" "${jvm[@]}" "${jpms[@]}" "${props[@]}" "${extra[@]}" \
  -cp "$CQL_LIB/*" org.apache.cassandra.service.CassandraDaemon \
  </dev/null >"$dir/stdout.log" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"

fail() {
  echo "cql-server: error: $*" >&2
  echo "---- last 40 lines of $dir/system.log ----" >&2; tail -n 40 "$dir/system.log" >&2 || true
  echo "---- last 20 lines of $dir/stdout.log ----" >&2; tail -n 20 "$dir/stdout.log" >&2 || true
  exit 1
}
deadline=$((SECONDS + timeout_s))
last_err=""
while :; do
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$pidfile"
    fail "Cassandra exited during startup (pid $pid)"
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    if got=$(cql_probe "$port" 2>"$dir/.probe.err"); then
      rm -f "$dir/.probe.err"
      # Cassandra rewrote the pidfile itself (-Dcassandra-pidfile); trust it if it is live.
      own=$(cat "$pidfile" 2>/dev/null || true)
      if [[ -n $own && $own != "$pid" ]] && grep -qa CassandraDaemon "/proc/$own/cmdline" 2>/dev/null; then pid=$own; fi
      echo "$pid" >"$pidfile"
      secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
      rss=$(awk '/^VmRSS/{printf "%d MiB", $2/1024}' "/proc/$pid/status" 2>/dev/null || true)
      cql_log "Cassandra $got answers CQL on 127.0.0.1:$port after ${secs}s (pid $pid, RSS $rss)"
      echo "$pid"
      exit 0
    fi
    last_err=$(cat "$dir/.probe.err" 2>/dev/null || true); rm -f "$dir/.probe.err"
  fi
  if ((SECONDS >= deadline)); then
    kill -TERM "$pid" 2>/dev/null || true
    sleep 2; kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    fail "no working CQL on 127.0.0.1:$port within ${timeout_s}s${last_err:+ (last probe: $last_err)}; server killed"
  fi
  sleep 0.5
done
