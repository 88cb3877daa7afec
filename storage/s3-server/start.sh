#!/usr/bin/env bash
# Start a single-process SeaweedFS (master, volume, filer and S3 gateway) on 127.0.0.1
# for tests, with one identity (signed requests only) and one bucket.
# Usage: start.sh DATA_DIR PORT BUCKET ACCESS_KEY SECRET_KEY
#   S3 listens on PORT; master, volume and filer on PORT+1..PORT+3; each one's gRPC
#   port is 10000 above it (nothing else listens: no Iceberg catalog, no metrics).
#   Prints the server's PID once the bucket answers.
# Stop it with: stop.sh DATA_DIR   (the PID is also in DATA_DIR/weed.pid)
# Environment: SELFIE_S3_START_TIMEOUT seconds to wait (default 120).
set -euo pipefail
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

[[ $# -eq 5 ]] || { echo "usage: $0 DATA_DIR PORT BUCKET ACCESS_KEY SECRET_KEY" >&2; exit 2; }
mkdir -p "$1/data"
dir=$(cd "$1" && pwd)
port=$2 bucket=$3 access=$4 secret=$5
[[ $port =~ ^[0-9]+$ ]] || s3_die "PORT must be a number"
[[ $bucket =~ ^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$ ]] || s3_die "bad bucket name: $bucket"
for p in "$port" $((port + 1)) $((port + 2)) $((port + 3)) $((port + 10000)) $((port + 10001)) $((port + 10002)) $((port + 10003)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    s3_die "port $p on 127.0.0.1 is already in use; pick another PORT"
  fi
done
weed=$("$S3_HERE/fetch.sh")
timeout_s=${SELFIE_S3_START_TIMEOUT:-120}

umask 077
cat >"$dir/s3.json" <<JSON
{"identities": [{"name": "selfie", "credentials": [{"accessKey": "$access", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
t0=$SECONDS
nohup "$weed" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port=$((port + 1)) -master.volumeSizeLimitMB=64 -volume.port=$((port + 2)) -volume.max=64 \
  -filer -filer.port=$((port + 3)) -s3 -s3.port="$port" -s3.port.grpc=$((port + 10000)) \
  -s3.port.iceberg=0 -s3.config="$dir/s3.json" \
  >"$dir/weed.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/weed.pid"
s3_log "starting SeaweedFS (pid $pid) with S3 on 127.0.0.1:$port in $dir"

# Ready when the filer takes the bucket and the S3 gateway answers.
until "$weed" shell -master="127.0.0.1:$((port + 1))" <<<"s3.bucket.create -name $bucket" >"$dir/shell.log" 2>&1 \
      && grep -q . "$dir/shell.log" && ! grep -qi "error" "$dir/shell.log" \
      && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { tail -n 30 "$dir/weed.log" >&2; s3_die "SeaweedFS exited during start"; }
  (( SECONDS - t0 < timeout_s )) || { tail -n 30 "$dir/weed.log" >&2; cat "$dir/shell.log" >&2; s3_die "not ready after ${timeout_s}s"; }
  sleep 1
done
s3_log "bucket $bucket ready on 127.0.0.1:$port after $((SECONDS - t0)) s"
echo "$pid"
