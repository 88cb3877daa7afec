//! The web client's files (`web.client_dir`, the built `client-sdk/web/dist/app`), served by
//! the HTTPS listener (`[web]`) so that a newcomer opens one URL: read once at start into
//! memory (a few hundred KiB; no file system access per request, no path traversal),
//! with `ETag`s, and `/client.json`, which tells the page where the edge's QUIC port is
//! and, for the generated development certificate, its SHA-256 for WebTransport's
//! `serverCertificateHashes`.
//!
//! It must not serve anything outside that directory, nor anything but regular files of
//! the types listed in `content_type`.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;

/// Largest file served (the bundle is far smaller).
const MAX_FILE_BYTES: u64 = 8 << 20;
/// Most files read from the directory.
const MAX_FILES: usize = 256;

/// One file: bytes, type and entity tag.
#[derive(Debug, Clone)]
pub struct Asset {
    /// The bytes.
    pub bytes: Bytes,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// A strong `ETag` (quoted).
    pub etag: String,
}

/// The web client: its files by URL path (`/`, `/app.js`, ...).
#[derive(Debug, Default)]
pub struct WebApp {
    files: HashMap<String, Asset>,
}

/// The `Content-Type` of a file served, by extension; `None` for files not served.
fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

fn etag(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

impl WebApp {
    /// Reads the files of `dir` (and its subdirectories) and adds `/client.json` with
    /// the QUIC port and, when given, the development certificate's SHA-256 (hex).
    pub fn load(dir: &Path, quic_port: u16, dev_cert_sha256: Option<&str>) -> anyhow::Result<Self> {
        let mut app = WebApp::default();
        let mut pending = vec![(dir.to_path_buf(), String::new())];
        while let Some((path, prefix)) = pending.pop() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                // Symbolic links are not followed: only what the directory holds.
                let kind = entry.file_type()?;
                let url = format!("{prefix}/{name}");
                if kind.is_dir() {
                    pending.push((entry.path(), url));
                    continue;
                }
                let Some(content_type) = content_type(&name) else {
                    continue;
                };
                if !kind.is_file() || entry.metadata()?.len() > MAX_FILE_BYTES {
                    continue;
                }
                anyhow::ensure!(
                    app.files.len() < MAX_FILES,
                    "web.client_dir holds more than {MAX_FILES} files"
                );
                let bytes = Bytes::from(std::fs::read(entry.path())?);
                app.files.insert(
                    url,
                    Asset {
                        etag: etag(&bytes),
                        bytes,
                        content_type,
                    },
                );
            }
        }
        anyhow::ensure!(
            app.files.contains_key("/index.html"),
            "web.client_dir {} has no index.html (build it: cd client-sdk/web && npm ci && npm run build)",
            dir.display()
        );
        let client = serde_json::json!({
            "quicPort": quic_port,
            "certificateHash": dev_cert_sha256,
            "protocol": selfie_protocol::PROTOCOL_VERSION.to_string(),
        });
        let bytes = Bytes::from(client.to_string());
        app.files.insert(
            "/client.json".into(),
            Asset {
                etag: etag(&bytes),
                bytes,
                content_type: "application/json",
            },
        );
        Ok(app)
    }

    /// The file for a URL path (`/` is `/index.html`).
    pub fn get(&self, path: &str) -> Option<&Asset> {
        let path = if path == "/" { "/index.html" } else { path };
        self.files.get(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_the_directory_s_known_files() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("index.html"), "<html>").expect("write");
        std::fs::write(dir.path().join("app.js"), "x").expect("write");
        std::fs::write(dir.path().join("secret.key"), "no").expect("write");
        std::fs::write(dir.path().join(".env"), "no").expect("write");
        std::fs::create_dir(dir.path().join("img")).expect("dir");
        std::fs::write(dir.path().join("img/a.svg"), "<svg/>").expect("write");
        let app = WebApp::load(dir.path(), 4460, Some("ab")).expect("loads");
        assert_eq!(
            app.get("/").map(|a| a.content_type),
            Some("text/html; charset=utf-8")
        );
        assert!(app.get("/app.js").is_some());
        assert!(app.get("/img/a.svg").is_some());
        assert!(app.get("/secret.key").is_none());
        assert!(app.get("/.env").is_none());
        assert!(app.get("/../Cargo.toml").is_none());
        let client = app.get("/client.json").expect("client.json");
        let v: serde_json::Value = serde_json::from_slice(&client.bytes).expect("json");
        assert_eq!(v["quicPort"], 4460);
        assert_eq!(v["certificateHash"], "ab");
        let empty = tempfile::tempdir().expect("dir");
        assert!(
            WebApp::load(empty.path(), 1, None).is_err(),
            "no index.html"
        );
    }
}
