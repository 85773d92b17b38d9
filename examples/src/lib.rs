//! Small helpers shared by the runnable examples: where the shipped sample data lives.
//!
//! ```
//! let dir = openledger_examples::tiny_llama_dir();
//! assert!(dir.join("config.json").is_file());
//! ```

use std::path::PathBuf;

/// The shipped tiny Llama (with its PEFT adapters under `adapters/`), the examples' default model.
pub fn tiny_llama_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
    dir.canonicalize().unwrap_or(dir)
}
