//! Bearer API keys read from a file, each with a request rate limit (a token bucket) and an
//! admin flag that the adapter load / unload endpoints need.
//!
//! The file has one key per line: the key, then optional `name=NAME`, `rpm=N` (requests per
//! minute, default 600) and `admin`; blank lines and lines starting with `#` are skipped.
//!
//! ```text
//! # key                      options
//! sk-alice-0123456789abcdef  name=alice rpm=60
//! sk-ops-fedcba9876543210    name=ops admin
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::ApiError;

/// Requests per minute of a key that names no rate.
pub const DEFAULT_RPM: u32 = 600;
/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// One key's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Its name, for logs and metrics (default: `key-<line>`).
    pub name: String,
    /// Requests per minute.
    pub rpm: u32,
    /// Whether it may load and unload adapters.
    pub admin: bool,
}

/// Why a key file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read the API key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The keys and their buckets.
#[derive(Debug)]
pub struct ApiKeys {
    keys: HashMap<String, KeyInfo>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl ApiKeys {
    /// Reads the key file at `path` (format in the module docs).
    pub fn from_file(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| KeyFileError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses a key file's text; an error gives the line (from 1) and what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut keys = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let key = words.next().unwrap_or_default();
            if key.len() < MIN_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
                return Err((
                    n,
                    format!("a key must be at least {MIN_KEY_LEN} printable ASCII characters"),
                ));
            }
            let mut info = KeyInfo {
                name: format!("key-{n}"),
                rpm: DEFAULT_RPM,
                admin: false,
            };
            for w in words {
                if w == "admin" {
                    info.admin = true;
                } else if let Some(name) = w.strip_prefix("name=") {
                    info.name = name.to_owned();
                } else if let Some(rpm) = w.strip_prefix("rpm=") {
                    info.rpm = rpm
                        .parse()
                        .ok()
                        .filter(|&r| r > 0)
                        .ok_or((n, format!("rpm must be a positive integer, not {rpm:?}")))?;
                } else {
                    return Err((n, format!("unknown option {w:?}")));
                }
            }
            if keys.insert(key.to_owned(), info).is_some() {
                return Err((n, "the key is listed twice".into()));
            }
        }
        if keys.is_empty() {
            return Err((0, "the file lists no key".into()));
        }
        Ok(Self {
            keys,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Checks the `Authorization` header's bearer key and takes one request from its bucket.
    pub fn admit(&self, authorization: Option<&str>) -> Result<&KeyInfo, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized(
                "You didn't provide an API key: send it as `Authorization: Bearer KEY`.",
            ));
        };
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or("");
        let Some((key, info)) = self.keys.get_key_value(key) else {
            return Err(ApiError::unauthorized("Incorrect API key provided."));
        };
        let rate = f64::from(info.rpm) / 60.0;
        let capacity = f64::from(info.rpm);
        let mut buckets = self.buckets.lock();
        let now = Instant::now();
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(capacity);
        b.last = now;
        if b.tokens < 1.0 {
            let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
            return Err(ApiError::rate_limited(
                format!(
                    "Rate limit reached for key {}: {} requests per minute. Try again in {wait} s.",
                    info.name, info.rpm
                ),
                wait,
            ));
        }
        b.tokens -= 1.0;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_refuse_what_is_wrong() {
        let k =
            ApiKeys::parse("# c\n\nsk-aaaaaaaaaaaaaaaa name=a rpm=2\nsk-bbbbbbbbbbbbbbbb admin\n")
                .unwrap();
        assert_eq!(k.keys["sk-aaaaaaaaaaaaaaaa"].rpm, 2);
        assert!(k.keys["sk-bbbbbbbbbbbbbbbb"].admin);
        assert_eq!(k.keys["sk-bbbbbbbbbbbbbbbb"].name, "key-4");
        assert_eq!(ApiKeys::parse("short").unwrap_err().0, 1);
        assert_eq!(
            ApiKeys::parse("sk-aaaaaaaaaaaaaaaa\nsk-aaaaaaaaaaaaaaaa")
                .unwrap_err()
                .0,
            2
        );
        assert!(ApiKeys::parse("sk-aaaaaaaaaaaaaaaa rpm=0").is_err());
        assert!(ApiKeys::parse("sk-aaaaaaaaaaaaaaaa colour=red").is_err());
        assert!(ApiKeys::parse("# nothing").is_err());
    }

    #[test]
    fn a_bucket_admits_its_rate_then_refuses() {
        let k = ApiKeys::parse("sk-aaaaaaaaaaaaaaaa rpm=2").unwrap();
        let h = Some("Bearer sk-aaaaaaaaaaaaaaaa");
        assert!(k.admit(h).is_ok());
        assert!(k.admit(h).is_ok());
        let e = k.admit(h).unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        assert!(e.retry_after.unwrap() >= 1);
        assert_eq!(k.admit(None).unwrap_err().status.as_u16(), 401);
        assert_eq!(
            k.admit(Some("Bearer nope")).unwrap_err().status.as_u16(),
            401
        );
        assert_eq!(
            k.admit(Some("sk-aaaaaaaaaaaaaaaa"))
                .unwrap_err()
                .status
                .as_u16(),
            401
        );
    }
}
