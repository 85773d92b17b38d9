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

/// Draws a progress bar for `what` on standard error: on a terminal it redraws in place as
/// `done` grows (and ends its line at `total`); otherwise it prints one line, when complete.
pub fn progress_bar(what: &str, done: usize, total: usize) {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    if !terminal && done < total {
        return;
    }
    let width = 30;
    let filled = (done.min(total) * width)
        .checked_div(total)
        .unwrap_or(width);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "{}{what:<22} [{}{}] {done}/{total}{}",
        if terminal { "\r" } else { "" },
        "#".repeat(filled),
        " ".repeat(width - filled),
        if done >= total { "\n" } else { "" }
    );
    let _ = err.flush();
}

/// SmolLM2-135M-Instruct and all-MiniLM-L6-v2 as `bash scripts/fetch-models.sh` fetched them,
/// loaded for grounded answers with a progress bar; an error saying how to fetch them when
/// they are absent.
pub fn load_grounded(
    config: openledger::grounded::GroundedConfig,
) -> Result<openledger::grounded::Grounded, Box<dyn std::error::Error>> {
    use openledger::lora::embed::fetched_model;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models");
    let (Ok(smol), Ok(minilm)) = (
        fetched_model(&root, "SmolLM2-135M-Instruct"),
        fetched_model(&root, "all-MiniLM-L6-v2"),
    ) else {
        return Err("the models are absent: run `bash scripts/fetch-models.sh`".into());
    };
    Ok(openledger::grounded::Grounded::load_with_progress(
        &smol.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        &minilm,
        config,
        &mut |done, total| progress_bar("loading SmolLM2", done, total),
    )?)
}
