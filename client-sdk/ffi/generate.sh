#!/usr/bin/env bash
# Regenerates the mobile bindings: the protocol's types as UniFFI records
# (src/generated.rs, from protocol/schema/*.fbs), then the Kotlin and Swift sources
# (bindings/kotlin, bindings/swift) from the built library. The only way to change them:
# edit a schema or src/lib.rs, run this, commit all.
#
#   client-sdk/ffi/generate.sh            # writes src/generated.rs and bindings/
#   client-sdk/ffi/generate.sh OUT_DIR    # writes OUT_DIR/generated.rs, OUT_DIR/kotlin,
#                                         # OUT_DIR/swift (the up-to-date check)
#
# Needs python3 and cargo. Honours CARGO_TARGET_DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
if [ $# -ge 1 ]; then
  out=$(mkdir -p "$1" && cd "$1" && pwd)
  gen_rs="$out/generated.rs"; kotlin="$out/kotlin"; swift="$out/swift"
else
  gen_rs="$here/src/generated.rs"; kotlin="$here/bindings/kotlin"; swift="$here/bindings/swift"
fi
python3 "$here/gen_ffi.py" "$root/protocol/schema" > "$gen_rs.tmp"
mv "$gen_rs.tmp" "$gen_rs"
if [ $# -ge 1 ] && ! cmp -s "$gen_rs" "$here/src/generated.rs"; then
  # The library below is built from the committed src/generated.rs: bindings made from
  # it would not show the schema change; the caller compares generated.rs first.
  echo "generate.sh: src/generated.rs is stale" >&2
fi
(cd "$root" && cargo build -q -p selfie-ffi --lib && cargo build -q -p selfie-ffi --features bindgen --bin uniffi-bindgen)
case "$(uname -s)" in
  Darwin) lib="$target/debug/libselfie_ffi.dylib" ;;
  *) lib="$target/debug/libselfie_ffi.so" ;;
esac
rm -rf "$kotlin" "$swift"
mkdir -p "$kotlin" "$swift"
"$target/debug/uniffi-bindgen" generate --library "$lib" --language kotlin --no-format --out-dir "$kotlin"
"$target/debug/uniffi-bindgen" generate --library "$lib" --language swift --no-format --out-dir "$swift"
