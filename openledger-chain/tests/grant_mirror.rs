//! The Rust access-grant mirror (`openledger_core::grant::Grants`) against the real
//! `DatanetRegistry` contract: the same pseudo-random sequence of register / request / approve /
//! revoke calls from several accounts, including unknown datanets and non-owners, must succeed or
//! fail identically (same error, same fields) and leave the same `accessStatus` and `hasAccess`
//! for every datanet and account after every call.

use alloy_primitives::{Address, B256, U256, keccak256};
use openledger_chain::bindings::DatanetRegistry::{self, DatanetRegistryErrors as DErr};
use openledger_chain::evm::{EmbeddedChain, RevertReason, TxOutcome};
use openledger_core::grant::{AccessStatus, GrantError, Grants};

/// What the contract or the mirror answered to one call.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    UnknownDatanet(U256),
    NotOwner(U256, Address),
    Invalid(U256, Address, u8),
    Other(String),
}

fn from_chain(out: &TxOutcome) -> Outcome {
    if out.is_success() {
        return Outcome::Ok;
    }
    match out.revert_reason::<DErr>() {
        Some(RevertReason::Custom(DErr::UnknownDatanet(e))) => Outcome::UnknownDatanet(e.datanetId),
        Some(RevertReason::Custom(DErr::NotDatanetOwner(e))) => {
            Outcome::NotOwner(e.datanetId, e.caller)
        }
        Some(RevertReason::Custom(DErr::InvalidAccessTransition(e))) => {
            Outcome::Invalid(e.datanetId, e.requester, e.current)
        }
        other => Outcome::Other(format!("{other:?}")),
    }
}

fn from_mirror(r: Result<(), GrantError>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(GrantError::UnknownDatanet { datanet_id }) => Outcome::UnknownDatanet(datanet_id),
        Err(GrantError::NotDatanetOwner { datanet_id, caller }) => {
            Outcome::NotOwner(datanet_id, caller)
        }
        Err(GrantError::InvalidAccessTransition {
            datanet_id,
            requester,
            current,
        }) => Outcome::Invalid(datanet_id, requester, current as u8),
        Err(e) => Outcome::Other(e.to_string()),
    }
}

/// A small deterministic generator (splitmix64) so the sequence reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

#[test]
fn mirror_agrees_with_the_contract_on_every_transition_and_error() {
    let mut chain = EmbeddedChain::new(31337);
    let admin = chain.dev_account(0).address;
    let registry = chain
        .deploy(admin, &DatanetRegistry::BYTECODE, &[])
        .unwrap();
    let accounts: Vec<Address> = (0..5).map(|i| chain.dev_account(i).address).collect();
    let mut mirror = Grants::new();
    let mut rng = Rng(2024);
    let mut registered = 0u64;
    let mut seen = std::collections::HashMap::<&str, usize>::new();

    for call in 0..400 {
        // Ids 1..=registered + 1 exist or are one past the end (unknown).
        let datanet_id = U256::from(1 + rng.below(registered + 1));
        let caller = accounts[rng.below(accounts.len() as u64) as usize];
        let requester = accounts[rng.below(accounts.len() as u64) as usize];
        let purpose = keccak256(call.to_string());
        let action = if registered == 0 || rng.below(20) == 0 {
            "register"
        } else {
            ["request", "approve", "revoke"][rng.below(3) as usize]
        };
        let (chain_out, mirror_out) = match action {
            "register" => {
                let out = chain
                    .send(
                        caller,
                        registry,
                        &DatanetRegistry::registerDatanetCall {
                            metadataHash: B256::ZERO,
                            uri: String::new(),
                        },
                    )
                    .unwrap();
                let id = out
                    .returns::<DatanetRegistry::registerDatanetCall>()
                    .unwrap();
                assert_eq!(mirror.register_datanet(caller), id);
                registered += 1;
                (from_chain(&out), Outcome::Ok)
            }
            "request" => (
                from_chain(
                    &chain
                        .send(
                            requester,
                            registry,
                            &DatanetRegistry::requestAccessCall {
                                datanetId: datanet_id,
                                purposeHash: purpose,
                            },
                        )
                        .unwrap(),
                ),
                from_mirror(mirror.request(datanet_id, requester, purpose)),
            ),
            "approve" => (
                from_chain(
                    &chain
                        .send(
                            caller,
                            registry,
                            &DatanetRegistry::approveAccessCall {
                                datanetId: datanet_id,
                                requester,
                            },
                        )
                        .unwrap(),
                ),
                from_mirror(mirror.approve(datanet_id, caller, requester)),
            ),
            _ => (
                from_chain(
                    &chain
                        .send(
                            caller,
                            registry,
                            &DatanetRegistry::revokeAccessCall {
                                datanetId: datanet_id,
                                requester,
                            },
                        )
                        .unwrap(),
                ),
                from_mirror(mirror.revoke(datanet_id, caller, requester)),
            ),
        };
        assert_eq!(chain_out, mirror_out, "call {call}: {action}");
        let kind = match &chain_out {
            Outcome::Ok => "ok",
            Outcome::UnknownDatanet(..) => "unknown",
            Outcome::NotOwner(..) => "not owner",
            Outcome::Invalid(..) => "invalid",
            Outcome::Other(_) => "other",
        };
        *seen.entry(kind).or_default() += 1;

        // Every status and access right agrees, including on the unknown id past the end.
        for id in 1..=registered + 1 {
            let id = U256::from(id);
            for &who in &accounts {
                let status = chain
                    .view(
                        registry,
                        &DatanetRegistry::accessStatusCall {
                            datanetId: id,
                            requester: who,
                        },
                    )
                    .unwrap();
                assert_eq!(
                    AccessStatus::from_u8(status),
                    Some(mirror.status(id, who)),
                    "call {call}: status of {who} on {id}"
                );
                let has = chain
                    .view(
                        registry,
                        &DatanetRegistry::hasAccessCall {
                            datanetId: id,
                            account: who,
                        },
                    )
                    .unwrap();
                assert_eq!(has, mirror.has_access(id, who), "call {call}");
                assert_eq!(has, mirror.check(id, who).is_ok(), "call {call}");
            }
        }
    }
    // The sequence exercised every outcome, so the comparison above covered each rule.
    for kind in ["ok", "unknown", "not owner", "invalid"] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 5,
            "{kind}: {seen:?}"
        );
    }
    assert!(!seen.contains_key("other"), "{seen:?}");
}
