//! The committed generated code must be exactly what `protocol/generate.sh` produces from
//! the committed schemas: nobody edits generated code by hand, and no schema change
//! lands without its code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn files_under(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("readable dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("readable file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same(committed: &Path, fresh: &Path) {
    let a = files_under(committed);
    let b = files_under(fresh);
    let only_committed: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_fresh: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        only_committed.is_empty() && only_fresh.is_empty() && differ.is_empty(),
        "{} is stale; run protocol/generate.sh and commit.\n\
         only committed: {only_committed:?}\nonly generated: {only_fresh:?}\ndiffer: {differ:?}",
        committed.display()
    );
}

#[test]
fn committed_generated_code_matches_a_fresh_generation() {
    // The directory at run time (cargo sets it), so that a test binary built from a copy
    // of the repository elsewhere and reused from a shared target directory still looks
    // at this checkout.
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let root = Path::new(&manifest_dir);
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new(root.join("generate.sh"))
        .arg(out.path())
        .status()
        .expect("run protocol/generate.sh (needs bash, flatc 25.12.19, python3)");
    assert!(status.success(), "protocol/generate.sh failed: {status}");
    assert_same(&root.join("src/generated"), &out.path().join("rust"));
    assert_same(&root.join("ts/generated"), &out.path().join("ts"));
}
