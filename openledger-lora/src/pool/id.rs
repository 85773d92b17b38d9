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
//!
//! An id may also spell an **ensemble** of adapters served together with weights
//! (`y += Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ·x`, one SGMV segment per member, no merged copy):
//! `member('+'member)*`, each member an id with an optional `*weight` (a positive finite
//! number, 1 when left out): `a+b`, `acme/legal*0.7+acme/tone*0.3`, or `a*0.5` (one adapter at
//! half its scale). [`AdapterId::parse`] takes either form; [`AdapterId::new`] only plain ids,
//! which are what a pool registers and a hub folder is named. An ensemble's id is its canonical
//! spelling (members in the order given, a weight of 1 left out), so two requests naming the
//! same members and weights share one attached ensemble.
//!
//! ```
//! use openledger_lora::pool::{AdapterId, IdProblem};
//!
//! let e = AdapterId::parse("acme/legal*0.70+acme/tone*0.3").unwrap();
//! assert_eq!(e.as_str(), "acme/legal*0.7+acme/tone*0.3");
//! let members = e.members().unwrap();
//! assert_eq!(members[0], (AdapterId::new("acme/legal").unwrap(), 0.7));
//! assert_eq!(AdapterId::parse("a+b*1").unwrap().as_str(), "a+b");
//! assert_eq!(AdapterId::parse("a+a").unwrap_err().reason, IdProblem::DuplicateMember);
//! assert_eq!(AdapterId::parse("a*-1+b").unwrap_err().reason, IdProblem::MemberWeight);
//! assert_eq!(AdapterId::parse("a+../b").unwrap_err().reason, IdProblem::ParentComponent);
//! assert!(AdapterId::new("a+b").is_err());
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

/// Longest id accepted, in bytes (of a plain id, and of each member of an ensemble).
pub const MAX_ID_LEN: usize = 255;

/// Most adapters one ensemble may name.
pub const MAX_ENSEMBLE_MEMBERS: usize = 16;

/// A validated adapter id; cheap to clone (shared string).
///
/// It may also spell an ensemble of adapters served together with weights, `a+b` or
/// `a*0.7+b*0.3` (each member an id with an optional positive `*weight`, 1 when left out; see
/// [`parse`](Self::parse) and [`ensemble`](Self::ensemble)): the serving engine attaches the
/// members and runs `y += Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ·x`, one SGMV segment per member, no merged copy. Only
/// plain ids are registered in a pool or name a hub folder.
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
    /// A member of an ensemble has a weight that is not a positive finite number.
    MemberWeight,
    /// An ensemble names the same adapter twice.
    DuplicateMember,
    /// An ensemble names more than [`MAX_ENSEMBLE_MEMBERS`] adapters.
    TooManyMembers,
    /// The id spells an ensemble where only a plain adapter id is accepted (registering it).
    Ensemble,
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
            Self::MemberWeight => {
                f.write_str("a member's weight (after `*`) is not a positive finite number")
            }
            Self::DuplicateMember => f.write_str("an ensemble names the same adapter twice"),
            Self::TooManyMembers => write!(
                f,
                "an ensemble names more than {MAX_ENSEMBLE_MEMBERS} adapters"
            ),
            Self::Ensemble => f.write_str(
                "it spells an ensemble of adapters, which is served from its members and cannot be registered",
            ),
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

    /// Validates `s` as a plain id or an ensemble spelling (`member('+'member)*`, each member an
    /// id with an optional `*weight`); an ensemble is returned in its canonical spelling (members
    /// in the order given, a weight of 1 left out), so two requests naming the same members and
    /// weights share one attached ensemble.
    pub fn parse(s: &str) -> Result<Self, InvalidAdapterId> {
        if !s.contains(['+', '*']) {
            return Self::new(s);
        }
        let reject = |reason| InvalidAdapterId {
            id: s.chars().take(80).collect(),
            reason,
        };
        let parts: Vec<&str> = s.split('+').collect();
        if parts.len() > MAX_ENSEMBLE_MEMBERS {
            return Err(reject(IdProblem::TooManyMembers));
        }
        let mut members = Vec::with_capacity(parts.len());
        for part in parts {
            let (name, weight) = match part.split_once('*') {
                Some((name, w)) => {
                    let w: f32 = w.parse().map_err(|_| reject(IdProblem::MemberWeight))?;
                    (name, w)
                }
                None => (part, 1.0),
            };
            let id = Self::new(name).map_err(|e| reject(e.reason))?;
            members.push((id, weight));
        }
        Self::ensemble(&members)
    }

    /// The id of the ensemble of `members` (adapter, weight), in its canonical spelling.
    /// Refused: no member, more than [`MAX_ENSEMBLE_MEMBERS`], a member that is itself an
    /// ensemble, the same adapter twice, a weight that is not a positive finite number.
    pub fn ensemble(members: &[(AdapterId, f32)]) -> Result<Self, InvalidAdapterId> {
        let spelled = || {
            let mut s = String::new();
            for (j, (id, w)) in members.iter().enumerate() {
                if j > 0 {
                    s.push('+');
                }
                s.push_str(id.as_str());
                if *w != 1.0 {
                    s.push_str(&format!("*{w}"));
                }
            }
            s
        };
        let reject = |reason| InvalidAdapterId {
            id: spelled().chars().take(80).collect(),
            reason,
        };
        if members.is_empty() {
            return Err(reject(IdProblem::Empty));
        }
        if members.len() > MAX_ENSEMBLE_MEMBERS {
            return Err(reject(IdProblem::TooManyMembers));
        }
        for (j, (id, w)) in members.iter().enumerate() {
            if id.is_ensemble() {
                return Err(reject(IdProblem::Ensemble));
            }
            if !(w.is_finite() && *w > 0.0) {
                return Err(reject(IdProblem::MemberWeight));
            }
            if members[..j].iter().any(|(other, _)| other == id) {
                return Err(reject(IdProblem::DuplicateMember));
            }
        }
        Ok(Self(Arc::from(spelled())))
    }

    /// Whether the id spells an ensemble.
    pub fn is_ensemble(&self) -> bool {
        self.0.contains(['+', '*'])
    }

    /// The members (adapter, weight) of an ensemble id, in order; `None` for a plain id.
    pub fn members(&self) -> Option<Vec<(AdapterId, f32)>> {
        if !self.is_ensemble() {
            return None;
        }
        // Built by `ensemble`: every member is a valid id and every weight parses.
        self.0
            .split('+')
            .map(|part| {
                let (name, w) = part.split_once('*').unwrap_or((part, "1"));
                Some((Self(Arc::from(name)), w.parse().ok()?))
            })
            .collect()
    }

    /// The adapters an id stands for: its members for an ensemble, itself otherwise.
    pub fn adapters(&self) -> Vec<AdapterId> {
        match self.members() {
            Some(m) => m.into_iter().map(|(id, _)| id).collect(),
            None => vec![self.clone()],
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
    fn ensembles_round_trip_and_refuse_bad_members() {
        let e = AdapterId::parse("x*0.25+org/y+z*3").unwrap();
        assert_eq!(e.as_str(), "x*0.25+org/y+z*3");
        assert!(e.is_ensemble());
        let m = e.members().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].0.as_str(), m[0].1), ("x", 0.25));
        assert_eq!((m[1].0.as_str(), m[1].1), ("org/y", 1.0));
        assert_eq!(AdapterId::ensemble(&m).unwrap(), e);
        assert_eq!(e.adapters().len(), 3);
        let one = AdapterId::parse("x*0.5").unwrap();
        assert_eq!(one.members().unwrap().len(), 1);
        let plain = AdapterId::parse("x").unwrap();
        assert!(!plain.is_ensemble() && plain.members().is_none());
        assert_eq!(plain.adapters(), std::slice::from_ref(&plain));
        let bad = |s: &str| AdapterId::parse(s).unwrap_err().reason;
        for s in ["a*0", "a*-1", "a*nan", "a*inf", "a*", "a*x", "a*1*2"] {
            assert_eq!(bad(s), IdProblem::MemberWeight, "{s}");
        }
        assert_eq!(bad("a+"), IdProblem::Empty);
        assert_eq!(bad("+a"), IdProblem::Empty);
        assert_eq!(bad("a+b+a*2"), IdProblem::DuplicateMember);
        assert_eq!(bad("a+/etc"), IdProblem::Absolute);
        assert_eq!(bad("a+b\\c"), IdProblem::Backslash);
        let many = vec!["a"; MAX_ENSEMBLE_MEMBERS + 1].join("+");
        assert_eq!(bad(&many), IdProblem::TooManyMembers);
        let nested = [(e.clone(), 1.0)];
        assert_eq!(
            AdapterId::ensemble(&nested).unwrap_err().reason,
            IdProblem::Ensemble
        );
        assert_eq!(
            AdapterId::ensemble(&[]).unwrap_err().reason,
            IdProblem::Empty
        );
        assert!(matches!(
            AdapterId::new("a+b").unwrap_err().reason,
            IdProblem::ForbiddenChar('+')
        ));
    }

    #[test]
    fn rejection_names_the_input() {
        let e = AdapterId::new("../secret").unwrap_err();
        assert_eq!(e.id, "../secret");
        assert!(e.to_string().contains("\"../secret\""), "{e}");
    }
}
