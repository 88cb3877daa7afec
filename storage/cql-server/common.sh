# Sourced by fetch.sh / start.sh / stop.sh. Not executable on its own.
# shellcheck shell=bash

CQL_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Jars live outside the git tree (about 66 MiB, 100 jars).
# shellcheck disable=SC2034  # used by the scripts that source this file
CQL_LIB=${SELFIE_CQL_LIB:-$HOME/.cache/selfie/cql-server/lib}
# shellcheck disable=SC2034
CQL_MARKER_NAME=.selfie-cql-version

cql_die() { echo "cql-server: error: $*" >&2; exit 1; }
cql_log() { echo "cql-server: $*" >&2; }

# Version pinned in pom.xml, unless SELFIE_CQL_VERSION overrides it.
cql_version() {
  if [[ -n ${SELFIE_CQL_VERSION:-} ]]; then echo "$SELFIE_CQL_VERSION"; return; fi
  local v
  v=$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$CQL_HERE/pom.xml" | head -n1)
  [[ -n $v ]] || cql_die "cannot read <cassandra.version> from $CQL_HERE/pom.xml"
  echo "$v"
}

# Major version of a java binary (8 for 1.8, else 11, 17, 21 ...), or nothing.
cql_java_major() {
  local line
  line=$("$1" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1) || true
  [[ -n $line ]] || return 0
  if [[ $line == 1.* ]]; then line=${line#1.}; fi
  echo "${line%%[.+-]*}"
}

# Cassandra 5.0 supports Java 11 and 17 only. Pick one: SELFIE_CQL_JAVA, then
# JAVA_HOME, then PATH, then any JDK 17/11 under /usr/lib/jvm.
cql_find_java() {
  local c m
  local -a cands=()
  [[ -n ${SELFIE_CQL_JAVA:-} ]] && cands+=("$SELFIE_CQL_JAVA")
  [[ -n ${JAVA_HOME:-} ]] && cands+=("$JAVA_HOME/bin/java")
  command -v java >/dev/null 2>&1 && cands+=("$(command -v java)")
  for c in /usr/lib/jvm/*17*/bin/java /usr/lib/jvm/*-17-*/bin/java /usr/lib/jvm/*11*/bin/java; do
    [[ -x $c ]] && cands+=("$c")
  done
  for c in "${cands[@]}"; do
    [[ -x $c ]] || continue
    m=$(cql_java_major "$c")
    if [[ $m == 17 || $m == 11 ]]; then echo "$c"; return 0; fi
  done
  cql_die "no Java 11 or 17 found (Cassandra 5.0 needs one; tried: ${cands[*]:-none}). Set SELFIE_CQL_JAVA=/path/to/java"
}

# --- a tiny CQL client in bash (native protocol v4 over /dev/tcp) -------------------
# cql_probe PORT [QUERY]: connects to 127.0.0.1:PORT, sends STARTUP and a QUERY at
# consistency ONE, succeeds only if the server answers READY and then RESULT. Prints
# the printable tail of the result (for system.local's release_version: the version).
_cql_be32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)); }
_cql_read_hex() { timeout 10 head -c "$1" <&3 | od -An -v -tx1 | tr -d ' \n'; }
# shellcheck disable=SC2001
_cql_hex_to_text() { printf '%b' "$(sed 's/../\\x&/g' <<<"$1")" | tr -c '[:print:]' '\n' | sed '/^$/d'; }
cql_probe() {
  local port=$1 query=${2:-SELECT release_version FROM system.local}
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    local hdr len body qlen
    # STARTUP {CQL_VERSION: 3.0.0}, stream 1: body is 22 bytes.
    printf '\x04\x00\x00\x01\x01\x00\x00\x00\x16\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0' >&3
    hdr=$(_cql_read_hex 9)
    [[ ${#hdr} == 18 ]] || { echo "no answer to STARTUP" >&2; exit 1; }
    len=$((16#${hdr:10:8})); body=""
    ((len > 0)) && body=$(_cql_read_hex "$len")
    [[ ${hdr:8:2} == 02 ]] || { echo "STARTUP: opcode ${hdr:8:2}: $(_cql_hex_to_text "$body" | tr '\n' ' ')" >&2; exit 1; }
    # QUERY <long string> consistency ONE, no flags, stream 2.
    qlen=$(printf '%s' "$query" | wc -c)
    # shellcheck disable=SC2059  # the format is built from \xNN escapes on purpose
    printf "\\x04\\x00\\x00\\x02\\x07$(_cql_be32 $((qlen + 7)))$(_cql_be32 "$qlen")" >&3
    printf '%s' "$query" >&3
    printf '\x00\x01\x00' >&3
    hdr=$(_cql_read_hex 9)
    [[ ${#hdr} == 18 ]] || { echo "no answer to QUERY" >&2; exit 1; }
    len=$((16#${hdr:10:8})); body=""
    ((len > 0)) && body=$(_cql_read_hex "$len")
    [[ ${hdr:8:2} == 08 ]] || { echo "QUERY: opcode ${hdr:8:2}: $(_cql_hex_to_text "$body" | tr '\n' ' ')" >&2; exit 1; }
    _cql_hex_to_text "$body" | tail -n1; echo
  )
}
