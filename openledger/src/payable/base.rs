//! The loop's base model and how its text becomes tokens: a random LLaMA with the datanet's
//! word-level vocabulary, or a pretrained llama-family GGUF chat model with its own tokenizer.

use std::path::Path;

use openledger_lora::model::{GgufFile, Model, Tokenizer};

use super::*;

/// What the adapters are fine-tuned over and served on.
pub(crate) enum Base {
    /// A random LLaMA of `shape` made from `seed`, reading the datanet's words.
    Random {
        vocab: Vocab,
        shape: RandomLlama,
        seed: u64,
    },
    /// A pretrained model read from a GGUF file (weights dequantized to f32).
    Pretrained {
        model: Box<Model>,
        tokenizer: Box<Tokenizer>,
        /// The end-of-sequence token every trained answer ends with.
        eos: u32,
        /// keccak-256 of the file's bytes: the base model's id in the training log.
        id: B256,
        /// The file name, for the report.
        name: String,
    },
}

/// The pretrained base's prompt for `question`, after the sources block (if any).
pub(crate) fn question_prompt(question: &str) -> String {
    let q = question.trim();
    let mark = if q.ends_with(['?', '.', '!']) {
        ""
    } else {
        "?"
    };
    format!("Question: {q}{mark}\nAnswer:")
}

impl Base {
    /// Loads the GGUF file at `path`.
    pub(crate) fn pretrained(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path).map_err(|e| LoopError::Model(e.into()))?;
        let eos = *file.eos_token_ids().first().ok_or_else(|| {
            LoopError::Config(format!(
                "{}: the model names no end-of-sequence token",
                path.display()
            ))
        })?;
        let tokenizer = file.tokenizer().map_err(|e| LoopError::Model(e.into()))?;
        let model = file
            .to_model(&mut |_, _| {})
            .map_err(|e| LoopError::Model(e.into()))?;
        let bytes = std::fs::read(path)
            .map_err(|e| LoopError::Config(format!("{}: {e}", path.display())))?;
        Ok(Base::Pretrained {
            model: Box::new(model),
            tokenizer: Box::new(tokenizer),
            eos,
            id: keccak256(&bytes),
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
        })
    }

    /// A fresh copy of the base model.
    pub(crate) fn model(&self) -> Result<Model> {
        match self {
            Base::Random { shape, seed, .. } => Ok(shape.model(*seed)?),
            Base::Pretrained { model, .. } => Ok((**model).clone()),
        }
    }

    /// The base model's id in the training log.
    pub(crate) fn id(&self) -> B256 {
        match self {
            Base::Random { shape, seed, .. } => {
                keccak256((shape.config_json(), U256::from(*seed)).abi_encode_params())
            }
            Base::Pretrained { id, .. } => *id,
        }
    }

    /// What the report calls the base.
    pub(crate) fn describe(&self) -> String {
        match self {
            Base::Random { shape, .. } => format!(
                "random LLaMA ({} layers, hidden {}, {} words)",
                shape.layers, shape.hidden, shape.vocab
            ),
            Base::Pretrained { name, model, .. } => format!(
                "{name} ({} layers, hidden {}, vocabulary {})",
                model.config().num_layers,
                model.config().hidden_size,
                model.config().vocab_size
            ),
        }
    }

    fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        tokenizer
            .encode(text, false)
            .map_err(|e| LoopError::Model(e.into()))
    }

    /// The prompt of `question`.
    pub(crate) fn prompt(&self, question: &str) -> Result<Vec<u32>> {
        match self {
            Base::Random { vocab, .. } => Ok(vocab.prompt(question)),
            Base::Pretrained { tokenizer, .. } => {
                Self::encode(tokenizer, &question_prompt(question))
            }
        }
    }

    /// The prompt of `question` after numbered `sources` (the pretrained base's grounded
    /// prompt; the random base reads the question only).
    pub(crate) fn grounded_prompt(
        &self,
        sources: &[(usize, &str)],
        question: &str,
    ) -> Result<Vec<u32>> {
        match self {
            Base::Random { vocab, .. } => Ok(vocab.prompt(question)),
            Base::Pretrained { tokenizer, .. } => {
                let mut text = String::from("Sources:\n");
                for (n, s) in sources {
                    text.push_str(&format!("[{n}] {}\n", s.trim()));
                }
                text.push('\n');
                text.push_str(&question_prompt(question));
                Self::encode(tokenizer, &text)
            }
        }
    }

    /// The trained answer: its tokens, then the end-of-sequence token.
    pub(crate) fn answer(&self, response: &str) -> Result<Vec<u32>> {
        match self {
            Base::Random { vocab, .. } => Ok(vocab.answer(response)),
            Base::Pretrained { tokenizer, eos, .. } => {
                let mut ids = Self::encode(tokenizer, &format!(" {}", response.trim()))?;
                ids.push(*eos);
                Ok(ids)
            }
        }
    }

    /// The end-of-sequence token.
    pub(crate) fn eos(&self) -> u32 {
        match self {
            Base::Random { .. } => Vocab::EOS,
            Base::Pretrained { eos, .. } => *eos,
        }
    }

    /// The text of `ids` (special tokens left out).
    pub(crate) fn decode(&self, ids: &[u32]) -> String {
        match self {
            Base::Random { vocab, .. } => vocab.decode(ids),
            Base::Pretrained { tokenizer, .. } => tokenizer
                .decode(ids, true)
                .map(|t| t.trim().to_owned())
                .unwrap_or_default(),
        }
    }

    /// The text of one token, as it streams.
    pub(crate) fn piece(&self, token: u32) -> String {
        match self {
            Base::Random { vocab, .. } => vocab.word(token).to_string(),
            Base::Pretrained { tokenizer, .. } => {
                tokenizer.decode(&[token], true).unwrap_or_default()
            }
        }
    }

    /// Whether this is a pretrained model (answers are grounded in retrieved records and
    /// credited by ContextCite).
    pub(crate) fn is_pretrained(&self) -> bool {
        matches!(self, Base::Pretrained { .. })
    }
}
