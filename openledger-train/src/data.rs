//! Training data: records (plain text, or a prompt and its response) tokenised with the
//! model's tokenizer into [`Example`]s, which carry a loss mask (causal-LM loss on response
//! tokens only for prompt/response records, on every token after the first for text) and,
//! optionally, the datanet record they came from.
//!
//! ```
//! use openledger_train::Example;
//!
//! let ex = Example::prompt_response(&[1, 10, 11], &[12, 13]);
//! assert_eq!(ex.tokens, vec![1, 10, 11, 12, 13]);
//! assert_eq!(ex.loss_mask, vec![false, false, false, true, true]);
//! assert_eq!(ex.targets(), 2);
//! ```

use openledger_core::{ContentId, U256};

use crate::error::TrainError;
use openledger_lora::model::Tokenizer;

/// Where an example came from: a datanet record (for access checks and the training log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The datanet id (as on chain).
    pub datanet: U256,
    /// The record's content id.
    pub record: ContentId,
}

/// One tokenised training example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// One entry per token: whether the loss is taken on predicting that token (from the
    /// previous position). Entry 0 is never a target.
    pub loss_mask: Vec<bool>,
    /// The record the example came from, if any.
    pub source: Option<Source>,
}

impl Example {
    /// Plain text: loss on every token after the first.
    pub fn text(tokens: &[u32]) -> Self {
        Example {
            tokens: tokens.to_vec(),
            loss_mask: (0..tokens.len()).map(|i| i > 0).collect(),
            source: None,
        }
    }

    /// A prompt followed by its response: loss on the response tokens only.
    pub fn prompt_response(prompt: &[u32], response: &[u32]) -> Self {
        let mut tokens = prompt.to_vec();
        tokens.extend_from_slice(response);
        let mut loss_mask = vec![false; prompt.len()];
        loss_mask.extend((0..response.len()).map(|i| prompt.len() + i > 0));
        Example {
            tokens,
            loss_mask,
            source: None,
        }
    }

    /// The same example, tagged with the record it came from.
    pub fn with_source(mut self, datanet: U256, record: ContentId) -> Self {
        self.source = Some(Source { datanet, record });
        self
    }

    /// Number of tokens the loss is taken on.
    pub fn targets(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|&&m| m).count()
    }

    /// `(position, token)` of each target: the row at `position` predicts `token`.
    pub(crate) fn target_pairs(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        (1..self.tokens.len())
            .filter(|&i| self.loss_mask[i])
            .map(|i| (i - 1, self.tokens[i]))
    }
}

/// The body of a record to tokenise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordText {
    /// Plain text (loss on every token).
    Text(String),
    /// An instruction and its answer (loss on the answer only).
    PromptResponse {
        /// The prompt.
        prompt: String,
        /// The response.
        response: String,
    },
}

/// Tokenises one record: the prompt (or text) with the tokenizer's special tokens (BOS), the
/// response without them, then `eos` when given.
pub fn tokenize(
    tokenizer: &Tokenizer,
    record: &RecordText,
    eos: Option<u32>,
) -> Result<Example, TrainError> {
    let mut ex = match record {
        RecordText::Text(t) => Example::text(&tokenizer.encode(t, true)?),
        RecordText::PromptResponse { prompt, response } => Example::prompt_response(
            &tokenizer.encode(prompt, true)?,
            &tokenizer.encode(response, false)?,
        ),
    };
    if let Some(eos) = eos {
        ex.loss_mask.push(!ex.tokens.is_empty());
        ex.tokens.push(eos);
    }
    Ok(ex)
}

/// Checks every example of a split: mask length, at least one target, length within
/// `max_len`, tokens within the vocabulary.
pub(crate) fn validate(
    split: &'static str,
    examples: &[Example],
    max_len: usize,
    vocab: usize,
) -> Result<(), TrainError> {
    if examples.is_empty() {
        return Err(TrainError::EmptyDataset { split });
    }
    for (index, ex) in examples.iter().enumerate() {
        if ex.loss_mask.len() != ex.tokens.len() {
            return Err(TrainError::MaskLength {
                index,
                tokens: ex.tokens.len(),
                mask: ex.loss_mask.len(),
            });
        }
        if ex.tokens.len() > max_len {
            return Err(TrainError::ExampleTooLong {
                split,
                index,
                len: ex.tokens.len(),
                max: max_len,
            });
        }
        if let Some((position, &token)) = ex
            .tokens
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= vocab)
        {
            return Err(TrainError::TokenOutOfVocab {
                index,
                position,
                token,
                vocab,
            });
        }
        if ex.targets() == 0 {
            return Err(TrainError::NoTargets { split, index });
        }
    }
    Ok(())
}
