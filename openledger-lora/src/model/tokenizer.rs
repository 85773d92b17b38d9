//! Text ↔ token ids with an HF `tokenizer.json` (the `tokenizers` crate, pure Rust regexes).
//!
//! ```
//! use openledger_lora::model::Tokenizer;
//!
//! let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
//!     "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
//!     "decoder": null, "model": {"type": "WordLevel",
//!     "vocab": {"<unk>": 0, "hello": 1, "world": 2}, "unk_token": "<unk>"}}"#;
//! let tok = Tokenizer::from_bytes(json.as_bytes()).unwrap();
//! assert_eq!(tok.encode("hello world", false).unwrap(), vec![1, 2]);
//! assert_eq!(tok.decode(&[1, 2], true).unwrap(), "hello world");
//! ```

use std::path::Path;
use std::sync::Arc;

use super::error::ModelError;
use crate::serve::Detokenize;

/// File name of the tokenizer inside an HF model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A loaded HF tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

impl Tokenizer {
    /// Parses `tokenizer.json` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| err(TOKENIZER_FILE, e))?;
        Ok(Tokenizer { inner })
    }

    /// Reads `dir/tokenizer.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(TOKENIZER_FILE);
        let bytes =
            openledger_core::fsx::read_regular(&path, openledger_core::fsx::MAX_TOKENIZER_BYTES)
                .map_err(|source| ModelError::Io { path, source })?;
        Self::from_bytes(&bytes)
    }

    /// `dir/tokenizer.json` when the folder has one (`None` when it has none; a file that is
    /// there but unreadable or malformed is an error, not ignored).
    pub fn in_model_dir(dir: &Path) -> Result<Option<Self>, ModelError> {
        if dir.join(TOKENIZER_FILE).exists() {
            Self::from_model_dir(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Token ids of `text` (with the tokenizer's special tokens, e.g. BOS, when
    /// `add_special_tokens`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; an id the vocabulary lacks is an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ModelError> {
        if let Some(&bad) = ids.iter().find(|&&i| self.inner.id_to_token(i).is_none()) {
            return Err(err(
                "decode",
                format!("token id {bad} is not in the vocabulary"),
            ));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| err("decode", e))
    }

    /// Number of tokens in the vocabulary, added tokens included (ids may be sparse).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, when it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Stop strings are matched in the output's text with special tokens left out; an output
/// holding an id outside the vocabulary has no text (it can match no stop string).
impl Detokenize for Tokenizer {
    fn detokenize(&self, tokens: &[u32]) -> String {
        self.decode(tokens, true).unwrap_or_default()
    }
}

/// A tokenizer shared with its owner's encode / decode calls.
impl Detokenize for Arc<Tokenizer> {
    fn detokenize(&self, tokens: &[u32]) -> String {
        self.as_ref().detokenize(tokens)
    }
}
