//! A local anvil node for tests, demos and benchmarks: started on a free loopback port, waited
//! for, stopped (killed) when dropped. Nothing listens anywhere but `127.0.0.1`.
//!
//! The binary is `$ANVIL` when set, else `anvil` from the pinned npm package under
//! `target/foundry` (installed by `scripts/install-foundry.sh`), else `anvil` on the `PATH`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ChainError;

/// Where `scripts/install-foundry.sh` puts the anvil binary, relative to the workspace root.
pub const INSTALLED: &str = "target/foundry/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

/// The anvil binary to run: `$ANVIL`, the installed npm package's (looked for from `root`), or
/// `None` when neither exists.
pub fn find(root: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ANVIL") {
        return Some(PathBuf::from(p));
    }
    let p = root.join(INSTALLED);
    if p.is_file() {
        return Some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("anvil"))
            .find(|p| p.is_file())
    })
}

/// For tests: anvil started with `args`, or `None` (said on stderr) when no binary is found,
/// unless `OPENLEDGER_REQUIRE_ANVIL` is set, where a missing binary panics. The binary is looked
/// for as [`find`] does, from this workspace's root.
pub fn spawn_or_skip(args: &[&str]) -> Option<Anvil> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(bin) = find(&root) else {
        assert!(
            std::env::var_os("OPENLEDGER_REQUIRE_ANVIL").is_none(),
            "anvil is required (bash scripts/install-foundry.sh)"
        );
        eprintln!("skipped: no anvil (bash scripts/install-foundry.sh)");
        return None;
    };
    match Anvil::spawn(&bin, args) {
        Ok(a) => Some(a),
        Err(e) => panic!("anvil does not start: {e}"),
    }
}

/// Why a started node is not ready: it exited, or something else.
enum NotReady {
    Exited(ChainError),
    Other(ChainError),
}
use NotReady::{Exited, Other};

/// A running anvil.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    port: u16,
    binary: PathBuf,
    args: Vec<String>,
}

/// A port nothing listens on right now.
fn free_port() -> Result<u16, ChainError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| rpc("bind", e))?;
    Ok(l.local_addr().map_err(|e| rpc("bind", e))?.port())
}

fn rpc(what: &str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Rpc {
        method: format!("anvil {what}"),
        reason: e.to_string(),
    }
}

impl Anvil {
    /// Starts `binary` on a free loopback port with the extra `args` (e.g. `--state`,
    /// `--timestamp`) and waits until it accepts connections. A node that exits before it
    /// listens (the port taken by another process between choosing and binding it) is started
    /// again on another port, three times at most.
    pub fn spawn(binary: &Path, args: &[&str]) -> Result<Self, ChainError> {
        let mut tries = 0;
        loop {
            let port = free_port()?;
            let mut a = Self {
                child: Self::start(binary, port, args)?,
                port,
                binary: binary.to_path_buf(),
                args: args.iter().map(|s| s.to_string()).collect(),
            };
            match a.wait_ready() {
                Ok(()) => return Ok(a),
                Err(Exited(_)) if tries < 2 => tries += 1,
                Err(Exited(e) | Other(e)) => return Err(e),
            }
        }
    }

    fn start(binary: &Path, port: u16, args: &[&str]) -> Result<Child, ChainError> {
        Command::new(binary)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--silent",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| rpc("start", format!("{}: {e}", binary.display())))
    }

    fn wait_ready(&mut self) -> Result<(), NotReady> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Exited(rpc("start", format!("exited with {status}"))));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Other(rpc("start", "not listening after 30 s")))
    }

    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the node (SIGTERM, so `--state` is written; SIGKILL after 10 s) and waits.
    pub fn stop(&mut self) -> Result<(), ChainError> {
        if self.child.try_wait().map_err(|e| rpc("stop", e))?.is_some() {
            return Ok(());
        }
        // SIGTERM, so that anvil writes its state file (`Child::kill` is SIGKILL).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().map_err(|e| rpc("stop", e))?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill().map_err(|e| rpc("stop", e))?;
        self.child.wait().map_err(|e| rpc("stop", e))?;
        Ok(())
    }

    /// Starts the node again on the same port with the same arguments (with `--state FILE` it
    /// comes back with the chain it had).
    pub fn restart(&mut self) -> Result<(), ChainError> {
        let args = self.args.clone();
        self.restart_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`restart`](Self::restart) with other arguments (say, without a `--timestamp` that would
    /// set the clock of a reloaded chain back to its genesis).
    pub fn restart_with(&mut self, args: &[&str]) -> Result<(), ChainError> {
        self.stop()?;
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.child = Self::start(&self.binary, self.port, args)?;
        self.wait_ready().map_err(|(Exited(e) | Other(e))| e)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
