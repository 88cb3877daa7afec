#!/usr/bin/env bash
# Build SeaweedFS's `weed` (an S3-compatible object store) from the Go module proxy into
# $SELFIE_S3_BIN (default ~/.cache/selfie/s3-server/<version>/weed). Idempotent: nothing
# is done when the binary is there. `go install …/weed@<version>` is refused (the module's
# go.mod has a `replace`), so the module is downloaded, copied and built in place
# (~25 s of downloads, ~3.5 min of build on 2 cores).
# Usage: fetch.sh            (prints the binary's path on stdout)
set -euo pipefail
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

if [[ -x $S3_BIN ]]; then echo "$S3_BIN"; exit 0; fi
command -v go >/dev/null 2>&1 || s3_die "go not found (install Go: the Go toolchain builds SeaweedFS)"
out=$(dirname "$S3_BIN")
mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
start=$SECONDS
s3_log "downloading github.com/seaweedfs/seaweedfs@$S3_VERSION (Go module proxy) ..."
dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "github.com/seaweedfs/seaweedfs@$S3_VERSION" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
  || s3_die "go mod download failed"
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
s3_log "building weed (a few minutes) ..."
( cd "$work/src" && go mod download && CGO_ENABLED=0 go build -o "$work/weed" ./weed ) \
  || s3_die "go build of weed failed"
mv "$work/weed" "$S3_BIN"
s3_log "built $S3_BIN in $((SECONDS - start)) s"
echo "$S3_BIN"
