//! `src/generated.rs` is what `gen_ffi.py` makes of the schemas today: a schema change
//! without `client-sdk/ffi/generate.sh` fails here. (The Kotlin and Swift sources are
//! compared by `scripts/test`, which builds the library they are generated from.)

use std::path::Path;
use std::process::Command;

#[test]
fn generated_records_match_the_schemas() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(here.join("gen_ffi.py"))
        .arg(here.join("../../protocol/schema"))
        .output()
        .expect("python3 runs gen_ffi.py");
    assert!(
        out.status.success(),
        "gen_ffi.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read(here.join("src/generated.rs")).expect("src/generated.rs");
    assert!(
        out.stdout == committed,
        "client-sdk/ffi/src/generated.rs is stale: run client-sdk/ffi/generate.sh and commit"
    );
}
