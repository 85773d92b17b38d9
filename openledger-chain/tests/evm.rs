//! The embedded chain behaves like a chain: nonces, gas charged at the base fee, blocks and time,
//! reverts that change nothing but the sender's gas, calls that commit nothing.

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::SolCall;
use openledger_chain::ChainError;
use openledger_chain::bindings::TestToken::{self, TestTokenErrors};
use openledger_chain::evm::{
    BASE_FEE, BLOCK_TIME, DEV_BALANCE, EmbeddedChain, RevertReason, TxStatus,
};

#[test]
fn dev_accounts_are_funded_and_distinct() {
    let chain = EmbeddedChain::new(7);
    let a = chain.dev_account(0).address;
    let b = chain.dev_account(1).address;
    assert_ne!(a, b);
    assert_eq!(chain.balance(a), U256::from(DEV_BALANCE));
    assert_eq!(chain.nonce(a), 0);
    assert_eq!(chain.chain_id(), 7);
}

#[test]
fn transactions_bump_nonces_mine_blocks_and_pay_gas_at_the_base_fee() {
    let mut chain = EmbeddedChain::new(31337);
    let a = chain.dev_account(0).address;
    let (n0, t0) = (chain.block_number(), chain.timestamp());
    let token = chain.deploy(a, &TestToken::BYTECODE, &[]).unwrap();
    assert_eq!(chain.nonce(a), 1);
    assert_eq!(chain.code(token), TestToken::DEPLOYED_BYTECODE.clone());
    let before = chain.balance(a);
    let out = chain
        .send(
            a,
            token,
            &TestToken::mintCall {
                to: a,
                amount: U256::from(9),
            },
        )
        .unwrap();
    assert!(out.is_success());
    assert_eq!(chain.nonce(a), 2);
    assert_eq!(
        before - chain.balance(a),
        U256::from(out.gas_used) * U256::from(BASE_FEE)
    );
    assert_eq!(chain.block_number(), n0 + 2);
    assert_eq!(chain.timestamp(), t0 + 2 * BLOCK_TIME);
    assert_eq!(out.block_number, n0 + 2);
    let transfers = out.events::<TestToken::Transfer>();
    assert_eq!(
        (transfers[0].from, transfers[0].to, transfers[0].value),
        (Address::ZERO, a, U256::from(9))
    );
    chain.advance_time(1000).unwrap();
    assert_eq!(chain.timestamp(), t0 + 2 * BLOCK_TIME + 1000);
}

#[test]
fn reverts_cost_gas_change_nothing_else_and_decode() {
    let mut chain = EmbeddedChain::new(31337);
    let (a, b) = (chain.dev_account(0).address, chain.dev_account(1).address);
    let token = chain.deploy(a, &TestToken::BYTECODE, &[]).unwrap();
    let before = chain.balance(a);
    let out = chain
        .send(
            a,
            token,
            &TestToken::transferCall {
                to: b,
                value: U256::from(1),
            },
        )
        .unwrap();
    assert_eq!(out.status, TxStatus::Revert);
    assert!(out.gas_used > 21_000);
    assert_eq!(
        before - chain.balance(a),
        U256::from(out.gas_used) * U256::from(BASE_FEE)
    );
    match out.revert_reason::<TestTokenErrors>() {
        Some(RevertReason::Custom(TestTokenErrors::ERC20InsufficientBalance(e))) => {
            assert_eq!(
                (e.sender, e.balance, e.needed),
                (a, U256::ZERO, U256::from(1))
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        out.into_success(),
        Err(ChainError::TransactionFailed { .. })
    ));
}

#[test]
fn calls_commit_nothing_and_raw_calldata_equals_typed_calls() {
    let mut chain = EmbeddedChain::new(31337);
    let a = chain.dev_account(0).address;
    let token = chain.deploy(a, &TestToken::BYTECODE, &[]).unwrap();
    let mint = TestToken::mintCall {
        to: a,
        amount: U256::from(5),
    };
    let raw: Bytes = mint.abi_encode().into();
    let (nonce, block) = (chain.nonce(a), chain.block_number());
    let out = chain.call(a, token, raw.clone()).unwrap();
    assert!(out.is_success());
    assert_eq!((chain.nonce(a), chain.block_number()), (nonce, block));
    assert_eq!(
        chain.view(token, &TestToken::totalSupplyCall {}).unwrap(),
        U256::ZERO
    );
    // The same bytes as a transaction do mint.
    assert!(chain.transact(a, token, raw).unwrap().is_success());
    assert_eq!(
        chain.view(token, &TestToken::totalSupplyCall {}).unwrap(),
        U256::from(5)
    );
}

#[test]
fn transactions_the_evm_refuses_are_errors_and_mine_no_block() {
    let mut chain = EmbeddedChain::new(31337);
    let pauper = Address::repeat_byte(0x77);
    let block = chain.block_number();
    let r = chain.transact(pauper, Address::repeat_byte(1), Bytes::new());
    assert!(matches!(r, Err(ChainError::Evm(_))), "{r:?}");
    assert_eq!(chain.block_number(), block);
    chain.fund(pauper, U256::from(10u128.pow(18))).unwrap();
    assert!(
        chain
            .transact(pauper, Address::repeat_byte(1), Bytes::new())
            .unwrap()
            .is_success()
    );
}
