//! Training-access grants: an off-chain mirror of the `DatanetRegistry` contract's approval
//! state machine, checked before anyone trains on a datanet.
//!
//! A requester asks to train on a datanet (`request`, with a purpose hash), the datanet's owner
//! approves or declines/revokes, and training calls [`Grants::check`]. The transitions,
//! preconditions and errors are the contract's, one for one:
//!
//! | action    | who             | allowed from            | to          | contract error otherwise  |
//! |-----------|-----------------|-------------------------|-------------|---------------------------|
//! | `request` | anyone          | `None`, `Revoked`       | `Requested` | `InvalidAccessTransition` |
//! | `approve` | datanet owner   | `Requested`             | `Approved`  | `InvalidAccessTransition` |
//! | `revoke`  | datanet owner   | `Requested`, `Approved` | `Revoked`   | `InvalidAccessTransition` |
//!
//! Every action on an unregistered datanet fails with `UnknownDatanet`; owner actions by anyone
//! else fail with `NotDatanetOwner` (checked in that order, as the contract's modifier does). The
//! owner always has access to their own datanet. A failed action changes nothing.
//!
//! ```
//! use openledger_core::grant::{AccessStatus, GrantError, Grants};
//! use openledger_core::{Address, B256};
//!
//! let (owner, trainer) = (Address::repeat_byte(1), Address::repeat_byte(2));
//! let mut grants = Grants::new();
//! let id = grants.register_datanet(owner);
//! assert!(matches!(grants.check(id, trainer), Err(GrantError::NoAccess { .. })));
//! grants.request(id, trainer, B256::repeat_byte(7)).unwrap();
//! grants.approve(id, owner, trainer).unwrap();
//! assert_eq!(grants.status(id, trainer), AccessStatus::Approved);
//! grants.check(id, trainer).unwrap();
//! grants.check(id, owner).unwrap(); // owners always may
//! ```

use crate::error::{Classify, ErrorKind};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use alloy_primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a training request stands; the discriminants equal the contract's `AccessStatus`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum AccessStatus {
    /// Never requested.
    #[default]
    None = 0,
    /// Requested, waiting for the owner.
    Requested = 1,
    /// Approved by the owner: training is allowed.
    Approved = 2,
    /// Revoked or declined by the owner; may be requested again.
    Revoked = 3,
}

impl AccessStatus {
    /// The status with the contract's numeric value `v`, `None` (the Rust `Option`) when `v` is
    /// not one of its four values.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Requested),
            2 => Some(Self::Approved),
            3 => Some(Self::Revoked),
            _ => None,
        }
    }
}

impl fmt::Display for AccessStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Requested => "Requested",
            Self::Approved => "Approved",
            Self::Revoked => "Revoked",
        })
    }
}

/// Why a grant action or an access check was refused; the grant set is unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantError {
    /// No datanet has this id (the contract's `UnknownDatanet`).
    #[error("unknown datanet {datanet_id}")]
    UnknownDatanet {
        /// The id asked for.
        datanet_id: U256,
    },
    /// Only the datanet's owner may approve or revoke (the contract's `NotDatanetOwner`).
    #[error("{caller} is not the owner of datanet {datanet_id}")]
    NotDatanetOwner {
        /// The datanet.
        datanet_id: U256,
        /// Who tried.
        caller: Address,
    },
    /// The requester's access is not in the state this action needs (the contract's
    /// `InvalidAccessTransition`).
    #[error("access of {requester} to datanet {datanet_id} is {current}: transition not allowed")]
    InvalidAccessTransition {
        /// The datanet.
        datanet_id: U256,
        /// Whose access.
        requester: Address,
        /// Its current status.
        current: AccessStatus,
    },
    /// Training refused: the requester is neither the owner nor approved.
    #[error("{requester} may not train on datanet {datanet_id} (access {status})")]
    NoAccess {
        /// The datanet.
        datanet_id: U256,
        /// Who wants to train.
        requester: Address,
        /// Their current status.
        status: AccessStatus,
    },
    /// A datanet recorded with the zero address as owner (the contract treats that as "unknown").
    #[error("datanet {datanet_id} cannot be owned by the zero address")]
    ZeroOwner {
        /// The datanet.
        datanet_id: U256,
    },
    /// A datanet id recorded twice, or id 0 (ids start at 1).
    #[error("datanet id {datanet_id} is zero or already recorded")]
    DatanetIdTaken {
        /// The id.
        datanet_id: U256,
    },
}

impl Classify for GrantError {
    fn kind(&self) -> ErrorKind {
        match self {
            GrantError::UnknownDatanet { .. } => ErrorKind::UnknownId,
            GrantError::NotDatanetOwner { .. } | GrantError::NoAccess { .. } => {
                ErrorKind::AccessDenied
            }
            GrantError::InvalidAccessTransition { .. } | GrantError::DatanetIdTaken { .. } => {
                ErrorKind::State
            }
            GrantError::ZeroOwner { .. } => ErrorKind::InvalidArgument,
        }
    }
}

/// One requester's grant on one datanet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessGrant {
    /// Where it stands.
    pub status: AccessStatus,
    /// The purpose hash of the latest request (`B256::ZERO` if never requested).
    pub purpose_hash: B256,
}

/// The access state of a set of datanets: owners, and each requester's grant.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    owners: BTreeMap<U256, Address>,
    access: HashMap<(U256, Address), AccessGrant>,
    count: U256,
}

impl Grants {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a datanet owned by `owner` under the next id (1, 2, ...), as
    /// `registerDatanet` numbers them.
    pub fn register_datanet(&mut self, owner: Address) -> U256 {
        let mut id = self.count + U256::from(1);
        while self.owners.contains_key(&id) {
            id += U256::from(1);
        }
        self.count = id;
        self.owners.insert(id, owner);
        id
    }

    /// Records a datanet seen on chain (for example from a `DatanetRegistered` event).
    pub fn record_datanet(&mut self, datanet_id: U256, owner: Address) -> Result<(), GrantError> {
        if owner == Address::ZERO {
            return Err(GrantError::ZeroOwner { datanet_id });
        }
        if datanet_id.is_zero() || self.owners.contains_key(&datanet_id) {
            return Err(GrantError::DatanetIdTaken { datanet_id });
        }
        self.owners.insert(datanet_id, owner);
        self.count = self.count.max(datanet_id);
        Ok(())
    }

    /// The owner of a datanet.
    pub fn owner(&self, datanet_id: U256) -> Option<Address> {
        self.owners.get(&datanet_id).copied()
    }

    fn owner_or_unknown(&self, datanet_id: U256) -> Result<Address, GrantError> {
        self.owner(datanet_id)
            .ok_or(GrantError::UnknownDatanet { datanet_id })
    }

    fn only_owner(&self, datanet_id: U256, caller: Address) -> Result<(), GrantError> {
        if self.owner_or_unknown(datanet_id)? != caller {
            return Err(GrantError::NotDatanetOwner { datanet_id, caller });
        }
        Ok(())
    }

    /// `requester`'s grant on a datanet (the default, status `None`, if never requested).
    pub fn grant(&self, datanet_id: U256, requester: Address) -> AccessGrant {
        self.access
            .get(&(datanet_id, requester))
            .copied()
            .unwrap_or_default()
    }

    /// `requester`'s status on a datanet (the contract's `accessStatus`).
    pub fn status(&self, datanet_id: U256, requester: Address) -> AccessStatus {
        self.grant(datanet_id, requester).status
    }

    /// `requester` asks to train on a datanet (the contract's `requestAccess`): allowed from
    /// `None` and `Revoked`.
    pub fn request(
        &mut self,
        datanet_id: U256,
        requester: Address,
        purpose_hash: B256,
    ) -> Result<(), GrantError> {
        self.owner_or_unknown(datanet_id)?;
        let current = self.status(datanet_id, requester);
        if matches!(current, AccessStatus::Requested | AccessStatus::Approved) {
            return Err(GrantError::InvalidAccessTransition {
                datanet_id,
                requester,
                current,
            });
        }
        self.access.insert(
            (datanet_id, requester),
            AccessGrant {
                status: AccessStatus::Requested,
                purpose_hash,
            },
        );
        Ok(())
    }

    /// The owner (`caller`) approves a pending request (the contract's `approveAccess`).
    pub fn approve(
        &mut self,
        datanet_id: U256,
        caller: Address,
        requester: Address,
    ) -> Result<(), GrantError> {
        self.only_owner(datanet_id, caller)?;
        self.transition(datanet_id, requester, AccessStatus::Approved, |s| {
            s == AccessStatus::Requested
        })
    }

    /// The owner (`caller`) revokes a grant or declines a request (the contract's
    /// `revokeAccess`).
    pub fn revoke(
        &mut self,
        datanet_id: U256,
        caller: Address,
        requester: Address,
    ) -> Result<(), GrantError> {
        self.only_owner(datanet_id, caller)?;
        self.transition(datanet_id, requester, AccessStatus::Revoked, |s| {
            matches!(s, AccessStatus::Requested | AccessStatus::Approved)
        })
    }

    fn transition(
        &mut self,
        datanet_id: U256,
        requester: Address,
        to: AccessStatus,
        allowed: impl Fn(AccessStatus) -> bool,
    ) -> Result<(), GrantError> {
        let current = self.status(datanet_id, requester);
        if !allowed(current) {
            return Err(GrantError::InvalidAccessTransition {
                datanet_id,
                requester,
                current,
            });
        }
        self.access
            .entry((datanet_id, requester))
            .or_default()
            .status = to;
        Ok(())
    }

    /// Whether `account` may train on a datanet: its owner, or an approved requester (the
    /// contract's `hasAccess`).
    pub fn has_access(&self, datanet_id: U256, account: Address) -> bool {
        match self.owner(datanet_id) {
            Some(owner) => {
                owner == account || self.status(datanet_id, account) == AccessStatus::Approved
            }
            None => false,
        }
    }

    /// What training calls before reading a datanet: `Ok` when `requester` may train on it,
    /// else an error naming the datanet and the requester.
    pub fn check(&self, datanet_id: U256, requester: Address) -> Result<(), GrantError> {
        self.owner_or_unknown(datanet_id)?;
        if self.has_access(datanet_id, requester) {
            Ok(())
        } else {
            Err(GrantError::NoAccess {
                datanet_id,
                requester,
                status: self.status(datanet_id, requester),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(b: u8) -> Address {
        Address::repeat_byte(b)
    }

    #[test]
    fn request_approve_revoke_request_again_follows_the_contract() {
        let mut g = Grants::new();
        let id = g.register_datanet(a(1));
        assert_eq!(id, U256::from(1));
        let p = B256::repeat_byte(9);
        g.request(id, a(2), p).unwrap();
        assert_eq!(g.grant(id, a(2)).purpose_hash, p);
        // A second request while pending is refused and changes nothing.
        let err = g.request(id, a(2), B256::ZERO).unwrap_err();
        assert_eq!(
            err,
            GrantError::InvalidAccessTransition {
                datanet_id: id,
                requester: a(2),
                current: AccessStatus::Requested
            }
        );
        assert_eq!(g.grant(id, a(2)).purpose_hash, p);
        g.approve(id, a(1), a(2)).unwrap();
        assert!(g.has_access(id, a(2)));
        assert!(g.request(id, a(2), p).is_err());
        assert!(g.approve(id, a(1), a(2)).is_err());
        g.revoke(id, a(1), a(2)).unwrap();
        assert_eq!(g.status(id, a(2)), AccessStatus::Revoked);
        assert!(g.revoke(id, a(1), a(2)).is_err());
        g.request(id, a(2), p).unwrap();
        assert_eq!(g.status(id, a(2)), AccessStatus::Requested);
    }

    #[test]
    fn owner_checks_come_after_the_unknown_datanet_check() {
        let mut g = Grants::new();
        let id = g.register_datanet(a(1));
        let unknown = U256::from(5);
        assert_eq!(
            g.approve(unknown, a(1), a(2)),
            Err(GrantError::UnknownDatanet {
                datanet_id: unknown
            })
        );
        assert_eq!(
            g.request(unknown, a(2), B256::ZERO),
            Err(GrantError::UnknownDatanet {
                datanet_id: unknown
            })
        );
        g.request(id, a(2), B256::ZERO).unwrap();
        assert_eq!(
            g.approve(id, a(3), a(2)),
            Err(GrantError::NotDatanetOwner {
                datanet_id: id,
                caller: a(3)
            })
        );
        // Declining a request that was never made is an invalid transition.
        assert!(matches!(
            g.revoke(id, a(1), a(4)),
            Err(GrantError::InvalidAccessTransition {
                current: AccessStatus::None,
                ..
            })
        ));
    }

    #[test]
    fn check_names_datanet_and_requester() {
        let mut g = Grants::new();
        let id = g.register_datanet(a(1));
        g.request(id, a(2), B256::ZERO).unwrap();
        let err = g.check(id, a(2)).unwrap_err();
        assert_eq!(
            err,
            GrantError::NoAccess {
                datanet_id: id,
                requester: a(2),
                status: AccessStatus::Requested
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&a(2).to_string()) && msg.contains("datanet 1"),
            "{msg}"
        );
        assert!(matches!(
            g.check(U256::from(2), a(1)),
            Err(GrantError::UnknownDatanet { .. })
        ));
        g.check(id, a(1)).unwrap();
    }

    #[test]
    fn recorded_datanets_reject_zero_owner_and_reused_ids() {
        let mut g = Grants::new();
        g.record_datanet(U256::from(7), a(1)).unwrap();
        assert!(matches!(
            g.record_datanet(U256::from(7), a(2)),
            Err(GrantError::DatanetIdTaken { .. })
        ));
        assert!(matches!(
            g.record_datanet(U256::ZERO, a(2)),
            Err(GrantError::DatanetIdTaken { .. })
        ));
        assert!(matches!(
            g.record_datanet(U256::from(8), Address::ZERO),
            Err(GrantError::ZeroOwner { .. })
        ));
        assert_eq!(g.register_datanet(a(3)), U256::from(8));
        assert_eq!(g.owner(U256::from(7)), Some(a(1)));
    }

    #[test]
    fn status_values_match_the_solidity_enum() {
        for v in 0..4u8 {
            assert_eq!(AccessStatus::from_u8(v).unwrap() as u8, v);
        }
        assert_eq!(AccessStatus::from_u8(4), None);
    }
}
