//! Adapters fetched from a model hub: a client of the Hugging Face hub's file layout
//! (`{endpoint}/{repo}/resolve/{revision}/{file}`), with the endpoint configurable, revisions,
//! and a local cache whose files are checked by size and SHA-256, plugged into the adapter pool
//! as a [`AdapterSource`].
//!
//! A downloaded file is accepted only when its length equals the response's `Content-Length`
//! (or `X-Linked-Size`) and, when the hub names a SHA-256 (`X-Linked-Etag` or `ETag` of 64 hex
//! digits, as it does for large files), when its hash equals it; it is written to the cache
//! under a temporary name and renamed, with its hash beside it (`FILE.sha256`). A cached file is
//! used again only when its bytes still hash to the recorded value. Repository ids, revisions
//! and file names are checked before any request (no `..`, no absolute paths, no odd bytes).
//!
//! ```no_run
//! use openledger_server::hub::{HubAdapter, HubClient};
//! use openledger_lora::pool::{AdapterId, AdapterPool, Source};
//! use std::sync::Arc;
//!
//! let client = Arc::new(HubClient::new("http://127.0.0.1:9000", "cache/hub".into())?);
//! let pool: AdapterPool = AdapterPool::new(512 << 20);
//! let source = HubAdapter::new(client, "team/support-lora", "main")?;
//! pool.register(AdapterId::new("support")?, Source::Custom(Arc::new(source)))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openledger_lora::pool::{AdapterBytes, AdapterId, AdapterSource, SourceError};
use sha2::{Digest, Sha256};

/// The PEFT files an adapter is made of.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];
/// The largest file fetched (adapters are megabytes; a hostile server cannot fill the disk).
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// Why a hub file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A repository id, revision or file name is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which part.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The hub answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The file's address.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The hub could not be reached or the transfer broke off.
    #[error("{url}: {reason}")]
    Transport {
        /// The file's address.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The bytes received are not as many as announced.
    #[error("{url}: {got} bytes received, {expected} announced")]
    Size {
        /// The file's address.
        url: String,
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The bytes received do not hash to what the hub named.
    #[error("{url}: SHA-256 {got}, the hub names {expected}")]
    Hash {
        /// The file's address.
        url: String,
        /// The hash the hub named.
        expected: String,
        /// The hash of the bytes.
        got: String,
    },
    /// The cache could not be read or written.
    #[error("hub cache {path}: {source}")]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A hub client with a local cache.
#[derive(Debug)]
pub struct HubClient {
    endpoint: String,
    cache: PathBuf,
    token: Option<String>,
    agent: ureq::Agent,
}

fn check_part(what: &'static str, value: &str, slashes: usize) -> Result<(), HubError> {
    let bad = |reason| {
        Err(HubError::Invalid {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() || value.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return bad("only letters, digits, '-', '_', '.' and '/' are allowed");
    }
    if value.split('/').count() > slashes + 1 {
        return bad("has too many '/'");
    }
    if value
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == ".." || p.starts_with('.'))
    {
        return bad("has an empty, '.' or '..' part");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl HubClient {
    /// A client of the hub at `endpoint` (`http://` or `https://`), caching files under
    /// `cache`. A token for private repositories is read from `OPENLEDGER_HUB_TOKEN`.
    pub fn new(endpoint: &str, cache: PathBuf) -> Result<Self, HubError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(HubError::Invalid {
                what: "endpoint",
                value: endpoint,
                reason: "must start with http:// or https://",
            });
        }
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            endpoint,
            cache,
            token: std::env::var("OPENLEDGER_HUB_TOKEN").ok(),
            agent,
        })
    }

    /// The hub's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The cache folder.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// The cached path of `file` of `repo` at `revision`, fetched first when it is not cached
    /// (or its cached bytes no longer hash to what was recorded).
    pub fn file(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf, HubError> {
        check_part("repository id", repo, 1)?;
        check_part("revision", revision, 0)?;
        check_part("file name", file, 4)?;
        let dir = self.cache.join(repo.replace('/', "--")).join(revision);
        let path = dir.join(file);
        let sum = path.with_file_name(format!(
            "{}.sha256",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        if let (Ok(bytes), Ok(recorded)) = (std::fs::read(&path), std::fs::read_to_string(&sum))
            && hex(&Sha256::digest(&bytes)) == recorded.trim()
        {
            return Ok(path);
        }
        let url = format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint);
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let transport = |e: &dyn std::fmt::Display| HubError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut resp = req.call().map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(HubError::Status { url, status });
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.trim()
                        .trim_start_matches("W/")
                        .trim_matches('"')
                        .to_owned()
                })
        };
        let size: Option<u64> = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|v| v.parse().ok());
        let sha = header("x-linked-etag")
            .or_else(|| header("etag"))
            .filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|e| e.to_ascii_lowercase());
        if let Some(n) = size
            && n > MAX_FILE_BYTES
        {
            return Err(HubError::Size {
                url,
                expected: n,
                got: 0,
            });
        }
        let mut bytes = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| transport(&e))?;
        let got = bytes.len() as u64;
        if size.is_some_and(|n| n != got) || got > MAX_FILE_BYTES {
            return Err(HubError::Size {
                url,
                expected: size.unwrap_or(MAX_FILE_BYTES),
                got,
            });
        }
        let digest = hex(&Sha256::digest(&bytes));
        if let Some(expected) = sha
            && expected != digest
        {
            return Err(HubError::Hash {
                url,
                expected,
                got: digest,
            });
        }
        let cache_err = |path: &Path, source| HubError::Cache {
            path: path.to_path_buf(),
            source,
        };
        let parent = path.parent().unwrap_or(&dir);
        std::fs::create_dir_all(parent).map_err(|e| cache_err(parent, e))?;
        let tmp = path.with_extension(format!("part-{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| cache_err(&tmp, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| cache_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| cache_err(&path, e))?;
        std::fs::write(&sum, &digest).map_err(|e| cache_err(&sum, e))?;
        Ok(path)
    }
}

/// One adapter of a hub repository at a revision: an [`AdapterSource`] for the pool.
#[derive(Debug, Clone)]
pub struct HubAdapter {
    client: Arc<HubClient>,
    repo: String,
    revision: String,
}

impl HubAdapter {
    /// The adapter in `repo` (`org/name`) at `revision` (a branch, tag or commit).
    pub fn new(client: Arc<HubClient>, repo: &str, revision: &str) -> Result<Self, HubError> {
        check_part("repository id", repo, 1)?;
        check_part("revision", revision, 0)?;
        Ok(Self {
            client,
            repo: repo.to_owned(),
            revision: revision.to_owned(),
        })
    }

    /// Parses `REPO` or `REPO@REVISION` (revision `main` when absent).
    pub fn parse(client: Arc<HubClient>, spec: &str) -> Result<Self, HubError> {
        let (repo, rev) = spec.split_once('@').unwrap_or((spec, "main"));
        Self::new(client, repo, rev)
    }

    /// The repository and revision.
    pub fn repo(&self) -> (&str, &str) {
        (&self.repo, &self.revision)
    }
}

impl AdapterSource for HubAdapter {
    fn fetch(&self, _id: &AdapterId) -> Result<AdapterBytes, SourceError> {
        let [config, weights] =
            ADAPTER_FILES.map(|f| self.client.file(&self.repo, &self.revision, f));
        let read =
            |p: PathBuf| std::fs::read(&p).map_err(|source| HubError::Cache { path: p, source });
        Ok(AdapterBytes {
            config_json: read(config?)?,
            safetensors: read(weights?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_request() {
        for bad in [
            "",
            "../x",
            "a/../b",
            "/abs",
            "a//b",
            "a/b/c",
            ".hidden/x",
            "a b",
            "a\u{0}b",
            "ünï/x",
        ] {
            assert!(check_part("repository id", bad, 1).is_err(), "{bad:?}");
        }
        for good in ["name", "org/name", "org/name.v2", "org/my_lora-3"] {
            assert!(check_part("repository id", good, 1).is_ok(), "{good:?}");
        }
        assert!(check_part("revision", "main/x", 0).is_err());
        assert!(HubClient::new("ftp://x", "c".into()).is_err());
    }
}
