//! Deploys the openledger contracts on an EVM node and writes a deployment file, which
//! `payable_ai --rpc URL --deployment FILE` (and `PayableAi::on_deployment`) then use instead of
//! deploying again.
//!
//! Keys come from `OPENLEDGER_KEYS` (comma-separated hex; the first four are the admin, who
//! deploys and pays the gas, the treasury, the operator who signs receipts and the epoch poster)
//! or, when it is unset, from anvil's well-known dev keys.
//!
//! `cargo run --release --example deploy -- --rpc URL --out FILE [--protocol-bps N]
//! [--data-pool-bps N] [--epoch-seconds N] [--token ADDRESS] [--guardian ADDRESS]
//! [--admin-delay-seconds N] [--challenge-seconds N] [--claim-seconds N] [--unclaimed-to ADDRESS]`
//!
//! The guardian (by default the admin) may veto a posted root during its challenge window and
//! pause payments and claims; admin transfers and split changes wait `--admin-delay-seconds`;
//! what is left unclaimed `--claim-seconds` after a root's window goes to `--unclaimed-to` (by
//! default the treasury).

use std::path::PathBuf;

use openledger::chain::chain::Chain;
use openledger::chain::deploy::{DeployConfig, Deployment};
use openledger::chain::rpc::{RpcChain, keys_from_env};
use openledger::core::Address;

type Error = Box<dyn std::error::Error>;

#[derive(Debug)]
struct Args {
    rpc: String,
    out: PathBuf,
    protocol_bps: u16,
    data_pool_bps: u16,
    epoch_seconds: u64,
    token: Option<Address>,
    guardian: Option<Address>,
    admin_delay: Option<u64>,
    challenge: Option<u64>,
    claim: Option<u64>,
    unclaimed_to: Option<Address>,
}

const USAGE: &str = "deploy --rpc URL --out FILE [--protocol-bps N] [--data-pool-bps N] \
[--epoch-seconds N] [--token ADDRESS] [--guardian ADDRESS] [--admin-delay-seconds N] \
[--challenge-seconds N] [--claim-seconds N] [--unclaimed-to ADDRESS]";

fn args(argv: impl IntoIterator<Item = String>) -> Result<Args, Error> {
    let (mut rpc, mut out) = (None, None);
    let mut a = Args {
        rpc: String::new(),
        out: PathBuf::new(),
        protocol_bps: 500,
        data_pool_bps: 2000,
        epoch_seconds: 86_400,
        token: None,
        guardian: None,
        admin_delay: None,
        challenge: None,
        claim: None,
        unclaimed_to: None,
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--rpc" => rpc = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--protocol-bps" => a.protocol_bps = value()?.parse()?,
            "--data-pool-bps" => a.data_pool_bps = value()?.parse()?,
            "--epoch-seconds" => a.epoch_seconds = value()?.parse()?,
            "--token" => a.token = Some(value()?.parse()?),
            "--guardian" => a.guardian = Some(value()?.parse()?),
            "--admin-delay-seconds" => a.admin_delay = Some(value()?.parse()?),
            "--challenge-seconds" => a.challenge = Some(value()?.parse()?),
            "--claim-seconds" => a.claim = Some(value()?.parse()?),
            "--unclaimed-to" => a.unclaimed_to = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    a.rpc = rpc.ok_or("--rpc URL is required")?;
    a.out = out.ok_or("--out FILE is required")?;
    Ok(a)
}

fn main() -> Result<(), Error> {
    let a = args(std::env::args().skip(1))?;
    let (keys, anvil) = keys_from_env("OPENLEDGER_KEYS")?;
    if anvil {
        println!("OPENLEDGER_KEYS is not set: deploying from anvil's well-known dev keys");
    }
    if keys.len() < 4 {
        return Err(format!("four keys are needed, {} given", keys.len()).into());
    }
    let at = |i: usize| Address::from_private_key(&keys[i]);
    let mut config = DeployConfig::with_accounts([at(0), at(1), at(2), at(3)]);
    config.protocol_bps = a.protocol_bps;
    config.data_pool_bps = a.data_pool_bps;
    config.epoch_duration = a.epoch_seconds;
    config.token = a.token;
    config.guardian = a.guardian.unwrap_or(config.guardian);
    config.admin_delay = a.admin_delay.unwrap_or(config.admin_delay);
    config.challenge_window = a.challenge.unwrap_or(config.challenge_window);
    config.claim_period = a.claim.unwrap_or(config.claim_period);
    config.unclaimed_recipient = a.unclaimed_to.unwrap_or(config.unclaimed_recipient);
    let mut chain = RpcChain::connect(&a.rpc, keys)?;
    println!(
        "deploying on {} (chain {}, {})",
        a.rpc,
        chain.chain_id(),
        chain.client_version()
    );
    let file = Deployment::deploy_recorded(&mut chain, &config)?;
    for t in &file.transactions {
        let hash = t.hash.map_or_else(|| "-".to_string(), |h| h.to_string());
        println!("  {:<22} block {:>6}  {hash}", t.what, t.block);
    }
    file.check(&mut chain)?;
    file.write(&a.out)?;
    println!("deployment: {}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_and_the_file_are_required_and_numbers_checked() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(args(s(&["--out", "d.json"])).is_err());
        assert!(args(s(&["--rpc", "http://127.0.0.1:8545"])).is_err());
        assert!(args(s(&["--rpc", "u", "--out", "f", "--protocol-bps", "x"])).is_err());
        let a = args(s(&["--rpc", "u", "--out", "f", "--epoch-seconds", "60"])).unwrap();
        assert_eq!((a.epoch_seconds, a.protocol_bps), (60, 500));
        assert_eq!((a.challenge, a.guardian), (None, None));
        let a = args(s(&[
            "--rpc",
            "u",
            "--out",
            "f",
            "--challenge-seconds",
            "600",
            "--guardian",
            "0x00000000000000000000000000000000000000aa",
        ]))
        .unwrap();
        assert_eq!(a.challenge, Some(600));
        assert_eq!(a.guardian, Some(Address::left_padding_from(&[0xaa])));
        assert!(args(s(&["--rpc", "u", "--out", "f", "--unclaimed-to", "0x12"])).is_err());
    }
}
