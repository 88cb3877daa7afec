# Sourced by fetch.sh / start.sh / stop.sh. Not executable on its own.
# shellcheck shell=bash

S3_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The SeaweedFS module version served by the Go module proxy (see ../../../shared/FINDINGS.md
# of the team; pinned here so every machine builds the same server).
S3_VERSION=${SELFIE_S3_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}
# The built `weed` binary lives outside the git tree (about 230 MB).
# shellcheck disable=SC2034  # used by the scripts that source this file
S3_BIN=${SELFIE_S3_BIN:-$HOME/.cache/selfie/s3-server/$S3_VERSION/weed}

s3_die() { echo "s3-server: error: $*" >&2; exit 1; }
s3_log() { echo "s3-server: $*" >&2; }
