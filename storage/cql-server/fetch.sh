#!/usr/bin/env bash
# Resolve the Apache Cassandra server jars from Maven Central into $SELFIE_CQL_LIB
# (default ~/.cache/selfie/cql-server/lib). Idempotent: a marker file in that folder
# records the version; if it matches, nothing is done.
# Usage: fetch.sh            (prints the lib folder on stdout)
set -euo pipefail
# shellcheck source=common.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

version=$(cql_version)
marker="$CQL_LIB/$CQL_MARKER_NAME"
if [[ -f $marker && $(cat "$marker") == "$version" ]] && compgen -G "$CQL_LIB/cassandra-all-$version.jar" >/dev/null; then
  echo "$CQL_LIB"; exit 0
fi

command -v mvn >/dev/null 2>&1 || cql_die "mvn not found (apt-get install -y maven)"
parent=$(dirname "$CQL_LIB")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.lib-tmp.XXXXXX")
chmod 755 "$tmp"
mvnlog="$tmp.mvn.log"
trap 'rm -rf "$tmp"' EXIT
cql_log "resolving org.apache.cassandra:cassandra-all:$version into $CQL_LIB (Maven Central) ..."
start=$SECONDS
if ! mvn -q -B -f "$CQL_HERE/pom.xml" -Dcassandra.version="$version" \
      dependency:copy-dependencies -DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
  cat "$mvnlog" >&2
  cql_die "maven could not resolve cassandra-all $version (full log above, also in $mvnlog)"
fi
[[ -f $tmp/cassandra-all-$version.jar ]] || { cat "$mvnlog" >&2; cql_die "cassandra-all-$version.jar missing after mvn"; }
echo "$version" >"$tmp/$CQL_MARKER_NAME"
rm -rf "$CQL_LIB"
mv "$tmp" "$CQL_LIB"
rm -f "$mvnlog"
trap - EXIT
cql_log "fetched $(find "$CQL_LIB" -name '*.jar' | wc -l) jars in $((SECONDS - start)) s"
echo "$CQL_LIB"
