//! Blobs in any S3-compatible object store (AWS S3, SeaweedFS, MinIO, R2...), for
//! fleets: every node reads and writes the same bucket. Requests are signed (SigV4) and
//! retried by the `object_store` crate; objects over one part go up as multipart uploads
//! of [`PART_BYTES`] parts, read from the local file piece by piece.
//!
//! Configured by URL: `s3://ACCESS_KEY:SECRET@host:port/bucket?region=us-east-1&tls=false`
//! (`tls` defaults to true; without a host port the scheme's default). The secret is
//! part of the URL like every other store's password, and redacted wherever the
//! configuration is printed; it is never logged.
//!
//! It must not: be handed a key the server did not make (keys are checked as the local
//! store checks them), or read a whole large object into memory (reads are ranged).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use tokio::io::AsyncReadExt;

use super::blob::{BlobStore, checked};
use crate::{BoxFuture, Error, Result};

/// Bytes per part of a multipart upload (S3 needs at least 5 MiB but the last).
pub const PART_BYTES: usize = 8 << 20;

/// An S3 bucket as a blob store.
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    bucket: String,
}

/// Where an `s3://` URL points (without its credentials, for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `http(s)://host:port`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The region signed for.
    pub region: String,
}

fn bad(why: &str) -> Error {
    tracing::warn!(why, "invalid media store URL");
    Error::InvalidArgument {
        field: "media store url",
    }
}

/// Parses `s3://KEY:SECRET@host[:port]/bucket?region=..&tls=..` into where it points
/// and its credentials.
pub fn parse_url(url: &str) -> Result<(S3Location, String, String)> {
    let u = url::Url::parse(url).map_err(|_| bad("not a URL"))?;
    if u.scheme() != "s3" {
        return Err(bad("scheme must be s3"));
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(bad("no host"))?;
    let bucket = u.path().trim_start_matches('/');
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(bad("bucket must be 3-63 of [a-z0-9.-]"));
    }
    let key = percent(u.username())?;
    let secret = percent(u.password().unwrap_or(""))?;
    if key.is_empty() || secret.is_empty() {
        return Err(bad("credentials missing (s3://KEY:SECRET@host/bucket)"));
    }
    let (mut region, mut tls) = ("us-east-1".to_string(), true);
    for (k, v) in u.query_pairs() {
        match &*k {
            "region" if !v.is_empty() => region = v.into_owned(),
            "tls" => {
                tls = match &*v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("tls must be true or false")),
                }
            }
            _ => return Err(bad("unknown parameter")),
        }
    }
    let scheme = if tls { "https" } else { "http" };
    let endpoint = match u.port() {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    };
    Ok((
        S3Location {
            endpoint,
            bucket: bucket.to_string(),
            region,
        },
        key,
        secret,
    ))
}

/// A URL's user or password as written (`%XX` decoded; `+` is a plus, as in
/// AWS secrets).
fn percent(s: &str) -> Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| bad("credentials must be UTF-8"))
}

/// A failed request: an absent key is `NotFound`; anything else (the network, the
/// server, a refused signature) is a storage failure, which callers retry later (a
/// processing job stays queued) rather than a fault of the object.
fn s3_err(e: object_store::Error) -> Error {
    if let object_store::Error::NotFound { .. } = e {
        return Error::NotFound("blob");
    }
    tracing::warn!(error = %e, "media object store request failed");
    Error::Storage(selfie_storage::StoreError::Io(std::io::Error::other(
        "media object store request failed",
    )))
}

impl S3Blobs {
    /// A store for `url` (see the module docs). Nothing is requested until first use.
    pub fn open(url: &str) -> Result<Self> {
        let (at, key, secret) = parse_url(url)?;
        let store = AmazonS3Builder::new()
            .with_endpoint(&at.endpoint)
            .with_bucket_name(&at.bucket)
            .with_region(&at.region)
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_allow_http(at.endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .build()
            .map_err(|e| {
                tracing::warn!(error = %e, "media object store not configured");
                bad("rejected by the S3 client")
            })?;
        Ok(Self {
            store: Arc::new(store),
            bucket: at.bucket,
        })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn path(key: &str) -> Result<Path> {
        Ok(Path::from(checked(key)?))
    }

    async fn exists(&self, path: &Path) -> Result<Option<u64>> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err(e)),
        }
    }

    /// Uploads the local file `from` as `path`: one request when it fits in a part,
    /// else a multipart upload (aborted if any part fails).
    async fn upload_file(&self, path: &Path, from: &std::path::Path) -> Result<()> {
        let mut file = tokio::fs::File::open(from).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        if size <= PART_BYTES as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).await.map_err(io)?;
            self.store
                .put(path, PutPayload::from(buf))
                .await
                .map_err(s3_err)?;
            return Ok(());
        }
        let upload = self.store.put_multipart(path).await.map_err(s3_err)?;
        // Aborted unless completed, also when this future is dropped (a node shutting
        // down): no orphaned parts are left in the bucket.
        let mut upload = AbortOnDrop(Some(upload));
        let sent = async {
            loop {
                let mut part = Vec::with_capacity(PART_BYTES);
                (&mut file)
                    .take(PART_BYTES as u64)
                    .read_to_end(&mut part)
                    .await
                    .map_err(io)?;
                if part.is_empty() {
                    break;
                }
                upload
                    .part()?
                    .put_part(PutPayload::from(part))
                    .await
                    .map_err(s3_err)?;
            }
            upload.part()?.complete().await.map_err(s3_err)?;
            upload.0 = None;
            Ok::<_, Error>(())
        }
        .await;
        if sent.is_err()
            && let Some(mut u) = upload.0.take()
        {
            let _ = u.abort().await;
        }
        sent
    }
}

/// A multipart upload that is aborted (in the background) if dropped unfinished.
struct AbortOnDrop(Option<Box<dyn object_store::MultipartUpload>>);

impl AbortOnDrop {
    fn part(&mut self) -> Result<&mut Box<dyn object_store::MultipartUpload>> {
        self.0
            .as_mut()
            .ok_or(Error::Internal("multipart upload already finished"))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(mut u) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = u.abort().await;
            });
        }
    }
}

fn io(e: std::io::Error) -> Error {
    tracing::warn!(error = %e, "media file i/o failed");
    Error::Internal("media storage i/o failed")
}

impl BlobStore for S3Blobs {
    fn backend(&self) -> &'static str {
        "s3"
    }

    fn put_file(&self, key: String, from: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let path = Self::path(&key)?;
            // Content-addressed: the same key is the same bytes.
            if self.exists(&path).await?.is_none() {
                self.upload_file(&path, &from).await?;
            }
            match tokio::fs::remove_file(&from).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            }
        })
    }

    fn put(&self, key: String, bytes: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let path = Self::path(&key)?;
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(s3_err)?;
            Ok(())
        })
    }

    fn read(&self, key: String, start: u64, len: usize) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let path = Self::path(&key)?;
            let size = self.exists(&path).await?.ok_or(Error::NotFound("blob"))?;
            let end = start.saturating_add(len as u64).min(size);
            if start >= end {
                return Ok(Bytes::new());
            }
            self.store
                .get_range(&path, start..end)
                .await
                .map_err(s3_err)
        })
    }

    fn size(&self, key: String) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(async move {
            let path = Self::path(&key)?;
            self.exists(&path).await
        })
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let path = Self::path(&key)?;
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(s3_err(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_credentials_apart() {
        let (at, key, secret) =
            parse_url("s3://AKID:s%2Fc+r%26t@127.0.0.1:8333/media-test?region=eu-west-1&tls=false")
                .expect("url");
        assert_eq!(at.endpoint, "http://127.0.0.1:8333");
        assert_eq!(at.bucket, "media-test");
        assert_eq!(at.region, "eu-west-1");
        assert_eq!((key.as_str(), secret.as_str()), ("AKID", "s/c+r&t"));
        let (at, _, _) = parse_url("s3://k:s@s3.example.com/bucket").expect("url");
        assert_eq!(at.endpoint, "https://s3.example.com");
        assert_eq!(at.region, "us-east-1");
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "http://k:s@host/bucket",
            "s3://host/bucket",
            "s3://k:s@host/",
            "s3://k:s@host/Upper",
            "s3://k:s@host/bucket?tls=maybe",
            "s3://k:s@host/bucket?acl=public",
            "not a url",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
