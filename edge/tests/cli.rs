//! The `selfie` binary: configuration commands, and `selfie migrate` against the real CQL
//! server that `scripts/test` starts (`SELFIE_CQL_NODES`).

use std::process::Command;

fn selfie() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfie"));
    // Only what each test sets: no SELFIE_* from the caller's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("SELFIE_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn config_check_accepts_defaults_and_refuses_unknown_keys() {
    let out = selfie()
        .args(["config", "check"])
        .output()
        .expect("run selfie");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = selfie()
        .args(["config", "check"])
        .env("SELFIE_SERVER_SHARDZ", "2")
        .output()
        .expect("run selfie");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SELFIE_SERVER_SHARDZ"));
}

#[test]
fn config_print_shows_overrides_and_redacts_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("selfie.toml");
    std::fs::write(&file, "[server]\nshards = 3\n").expect("write");
    let out = selfie()
        .args(["--config"])
        .arg(&file)
        .args(["config", "print", "--set", "server.node_id=\"edge-eu-7\""])
        .env(
            "SELFIE_STORAGE_REDIS_URL",
            "redis://svc:s3cret@cache:6379/0",
        )
        .output()
        .expect("run selfie");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("shards = 3"), "{text}");
    assert!(text.contains("node_id = \"edge-eu-7\""), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn migrate_creates_the_schema_once_then_is_a_no_op() {
    let nodes = std::env::var("SELFIE_CQL_NODES").expect(
        "SELFIE_CQL_NODES is not set: run the tests with scripts/test (it starts a CQL server)",
    );
    let keyspace = format!("migrate_{:08x}", rand::random::<u32>());
    let url = format!("cql://{nodes}/{keyspace}");
    let run = || {
        let out = selfie()
            .arg("migrate")
            .env("SELFIE_STORAGE_CQL_URL", &url)
            .env("SELFIE_LOG_LEVEL", "warn")
            .output()
            .expect("run selfie migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = run();
    let every: Vec<u32> = selfie_services::schema::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert!(
        first.contains(&format!("applied migrations {every:?}")),
        "{first}"
    );
    let second = run();
    assert!(second.contains("up to date"), "{second}");
    // The ledger exists on the server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cql = selfie_storage::cql::CqlConfig::from_url(&url).expect("url");
        let session = selfie_storage::cql::connect(&cql).await.expect("connect");
        session
            .query_unpaged(
                format!("SELECT version FROM {keyspace}.selfie_migrations"),
                &[],
            )
            .await
            .expect("ledger table exists");
    });
}

#[test]
fn migrate_without_a_cql_url_explains_what_is_missing() {
    let out = selfie().arg("migrate").output().expect("run selfie");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.cql_url"));
}

#[test]
fn the_deployment_example_configuration_is_valid() {
    let example = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../deploy/selfie.example.toml");
    let out = selfie()
        .args(["--config"])
        .arg(&example)
        .args(["config", "check"])
        .output()
        .expect("run selfie");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `selfie serve` on loopback ports over `dir`, with `args` added, its stdout and stderr
/// piped.
fn serve(dir: &std::path::Path, args: &[&str]) -> std::process::Child {
    selfie()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("SELFIE_OPS_LISTEN", "127.0.0.1:0")
        .env("SELFIE_SERVER_PIN_CORES", "false")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start selfie serve")
}

/// `selfie serve` with no configuration at all: it starts, its first-start log is the
/// edge's own (no dependency chatter: fjall's lsm-tree logged every table ingestion at
/// INFO), and SIGTERM drains it to exit 0.
#[test]
fn serve_starts_on_defaults_with_a_readable_log_and_drains_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = serve(dir.path(), &["--shards", "2"]);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut log = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).expect("read") > 0 {
        log.push_str(&line);
        if line.starts_with("certificate sha-256:") {
            break;
        }
        line.clear();
    }
    assert!(log.contains("udp://127.0.0.1:"), "{log}");
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()));
    out.read_to_string(&mut log).expect("rest of the log");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("drained; bye"), "{log}");
    for noisy in ["lsm_tree", "fjall"] {
        assert!(!log.contains(noisy), "{noisy} chatter in the log:\n{log}");
    }
    let lines = log.lines().count();
    assert!(lines < 20, "{lines} lines on a first start:\n{log}");
}

/// Defect: with its stdout closed (a supervisor that stopped reading), `selfie serve`
/// panicked printing "draining" on SIGTERM (`println!` panics on a broken pipe) instead
/// of draining. It now drains and exits 0 whatever became of stdout.
#[test]
fn sigterm_drains_even_when_stdout_is_closed() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = serve(dir.path(), &[]);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while out.read_line(&mut line).expect("read") > 0 && !line.starts_with("certificate") {
        line.clear();
    }
    // The reader goes away: the next line the edge prints meets a broken pipe.
    drop(out);
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()));
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}
