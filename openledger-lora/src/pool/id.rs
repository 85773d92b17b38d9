//! Adapter ids: validated names such as `qv-r4` or `acme/legal-summariser`.
//!
//! An id doubles as a relative folder name under a [`HubDir`](super::HubDir) root, so it is
//! validated before anything else sees it: no `..` or `.` components, no absolute paths, no
//! backslashes, no NUL, no empty components, no drive prefixes, only ASCII letters, digits and
//! `-`, `_`, `.` inside components, joined by `/`.
//!
//! ```
//! use openledger_lora::pool::{AdapterId, IdProblem};
//!
//! let id = AdapterId::new("acme/legal-summariser").unwrap();
//! assert_eq!(id.as_str(), "acme/legal-summariser");
//! assert_eq!(AdapterId::new("../etc").unwrap_err().reason, IdProblem::ParentComponent);
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 255;

/// A validated adapter id; cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterId(Arc<str>);

/// Why a string is not a valid [`AdapterId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdProblem {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    TooLong,
    /// The id starts with `/` (an absolute path).
    Absolute,
    /// The id has an empty component (`a//b`, or a trailing `/`).
    EmptyComponent,
    /// A component is `..`, which would climb out of the root.
    ParentComponent,
    /// A component is `.`.
    CurrentComponent,
    /// The id holds a backslash (a Windows path separator).
    Backslash,
    /// The id holds a NUL byte.
    Nul,
    /// The id starts with a drive prefix such as `C:`.
    DrivePrefix,
    /// The id holds a character outside ASCII letters, digits, `-`, `_`, `.` and `/`.
    ForbiddenChar(char),
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::TooLong => write!(f, "it is longer than {MAX_ID_LEN} bytes"),
            Self::Absolute => f.write_str("it is an absolute path"),
            Self::EmptyComponent => f.write_str("it has an empty path component"),
            Self::ParentComponent => f.write_str("it has a `..` component"),
            Self::CurrentComponent => f.write_str("it has a `.` component"),
            Self::Backslash => f.write_str("it holds a backslash"),
            Self::Nul => f.write_str("it holds a NUL byte"),
            Self::DrivePrefix => f.write_str("it starts with a drive prefix"),
            Self::ForbiddenChar(c) => write!(f, "it holds the forbidden character {c:?}"),
        }
    }
}

/// A string rejected as an [`AdapterId`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid adapter id {id:?}: {reason}")]
pub struct InvalidAdapterId {
    /// The rejected input (at most 80 characters of it).
    pub id: String,
    /// Why it was rejected.
    pub reason: IdProblem,
}

impl openledger_core::error::Classify for InvalidAdapterId {
    fn kind(&self) -> openledger_core::ErrorKind {
        openledger_core::ErrorKind::InvalidId
    }
}

impl AdapterId {
    /// Validates `s` as an adapter id.
    pub fn new(s: &str) -> Result<Self, InvalidAdapterId> {
        match problem(s) {
            None => Ok(Self(Arc::from(s))),
            Some(reason) => Err(InvalidAdapterId {
                id: s.chars().take(80).collect(),
                reason,
            }),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components of the id.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// The first problem with `s` as an id, if any.
fn problem(s: &str) -> Option<IdProblem> {
    if s.is_empty() {
        return Some(IdProblem::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Some(IdProblem::TooLong);
    }
    // Hostile shapes first, so the reason names the attack rather than a character.
    if s.contains('\0') {
        return Some(IdProblem::Nul);
    }
    if s.contains('\\') {
        return Some(IdProblem::Backslash);
    }
    if s.starts_with('/') {
        return Some(IdProblem::Absolute);
    }
    let b = s.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Some(IdProblem::DrivePrefix);
    }
    for comp in s.split('/') {
        match comp {
            "" => return Some(IdProblem::EmptyComponent),
            ".." => return Some(IdProblem::ParentComponent),
            "." => return Some(IdProblem::CurrentComponent),
            _ => {}
        }
        if let Some(c) = comp
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Some(IdProblem::ForbiddenChar(c));
        }
    }
    None
}

impl fmt::Display for AdapterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AdapterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdapterId({:?})", &*self.0)
    }
}

impl FromStr for AdapterId {
    type Err = InvalidAdapterId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for AdapterId {
    type Error = InvalidAdapterId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl AsRef<str> for AdapterId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for AdapterId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> IdProblem {
        AdapterId::new(s).unwrap_err().reason
    }

    #[test]
    fn accepts_plain_and_namespaced_ids() {
        for s in ["qv-r4", "acme/legal_v2", "a.b/c-d/e_f", "x", "v1.0"] {
            assert_eq!(AdapterId::new(s).unwrap().as_str(), s);
        }
        let id = AdapterId::new("org/name").unwrap();
        assert_eq!(id.components().collect::<Vec<_>>(), ["org", "name"]);
    }

    #[test]
    fn rejects_each_escaping_form_with_its_reason() {
        assert_eq!(reason(""), IdProblem::Empty);
        assert_eq!(reason(&"a".repeat(MAX_ID_LEN + 1)), IdProblem::TooLong);
        assert_eq!(reason("/etc/passwd"), IdProblem::Absolute);
        assert_eq!(reason(".."), IdProblem::ParentComponent);
        assert_eq!(reason("../x"), IdProblem::ParentComponent);
        assert_eq!(reason("a/../../x"), IdProblem::ParentComponent);
        assert_eq!(reason("a/./b"), IdProblem::CurrentComponent);
        assert_eq!(reason("a//b"), IdProblem::EmptyComponent);
        assert_eq!(reason("a/"), IdProblem::EmptyComponent);
        assert_eq!(reason("..\\x"), IdProblem::Backslash);
        assert_eq!(reason("a\0b"), IdProblem::Nul);
        assert_eq!(reason("C:evil"), IdProblem::DrivePrefix);
        assert_eq!(reason("c:/windows"), IdProblem::DrivePrefix);
        assert_eq!(reason("a b"), IdProblem::ForbiddenChar(' '));
        assert_eq!(reason("é"), IdProblem::ForbiddenChar('é'));
        assert_eq!(reason("ab:c"), IdProblem::ForbiddenChar(':'));
    }

    #[test]
    fn rejection_names_the_input() {
        let e = AdapterId::new("../secret").unwrap_err();
        assert_eq!(e.id, "../secret");
        assert!(e.to_string().contains("\"../secret\""), "{e}");
    }
}
