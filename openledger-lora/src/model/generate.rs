//! Text generation on a [`Model`] without the engine: the greedy continuation of a prompt over
//! the model's own KV cache, decoded and handed out in pieces that end before the first stop
//! string — what a phone or a script needs for one answer at a time.

use super::{AdapterSlot, Model, ModelError, Tokenizer};
use crate::serve::TextPieces;

/// A greedy continuation: its text and the tokens chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The answer: the text before the first stop string.
    pub text: String,
    /// The tokens chosen, without the stop token that ended the answer.
    pub tokens: Vec<u32>,
    /// The stop token that ended it, if one did.
    pub stop_token: Option<u32>,
}

impl Model {
    /// The greedy continuation of `prompt` (token ids) as text, streamed: `on_text` receives the
    /// answer piece by piece as tokens are chosen. It ends at the first of `stop_strings` to
    /// appear (the answer is the text before it), after `max_new_tokens` tokens, or when
    /// `on_text` returns `false` (it is not called again). While it runs, an end of the text
    /// that could still be the beginning of a stop string waits, so no piece is ever taken back.
    /// Returns the whole answer: the pieces joined plus, after `on_text` stopped it, what was
    /// still waiting. Each token decodes only a short window of text (special tokens skipped).
    /// An empty stop string is [`ModelError::InvalidArgument`].
    pub fn greedy_text_streaming(
        &self,
        tokenizer: &Tokenizer,
        adapter: Option<AdapterSlot>,
        prompt: &[u32],
        max_new_tokens: usize,
        stop_strings: &[String],
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<String, ModelError> {
        self.greedy_generate(
            tokenizer,
            adapter,
            prompt,
            max_new_tokens,
            &[],
            stop_strings,
            on_text,
        )
        .map(|g| g.text)
    }

    /// [`greedy_text_streaming`](Self::greedy_text_streaming) that also ends at the first of
    /// `stop_tokens` (a model's end-of-sequence ids, which decode to no text), and returns the
    /// tokens chosen with the text.
    #[allow(clippy::too_many_arguments)]
    pub fn greedy_generate(
        &self,
        tokenizer: &Tokenizer,
        adapter: Option<AdapterSlot>,
        prompt: &[u32],
        max_new_tokens: usize,
        stop_tokens: &[u32],
        stop_strings: &[String],
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generated, ModelError> {
        if stop_strings.iter().any(String::is_empty) {
            return Err(ModelError::InvalidArgument {
                name: "stop_strings",
                reason: "a stop string must not be empty".into(),
            });
        }
        let decode = |t: &[u32]| tokenizer.decode(t, true);
        let mut pieces = TextPieces::new(stop_strings);
        let mut out = Vec::new();
        let mut failed = None;
        let mut listening = true;
        let mut stop_token = None;
        self.greedy_streaming(adapter, prompt, max_new_tokens, &mut |_, token| {
            if stop_tokens.contains(&token) {
                stop_token = Some(token);
                return false;
            }
            out.push(token);
            match pieces.next_piece(&out, false, decode) {
                Ok(piece) if !piece.is_empty() && !on_text(piece) => {
                    listening = false;
                    false
                }
                Ok(_) => !pieces.reached_stop(),
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let rest = pieces.next_piece(&out, true, decode)?;
        if listening && !rest.is_empty() {
            on_text(rest);
        }
        Ok(Generated {
            text: pieces.given().to_owned(),
            tokens: out,
            stop_token,
        })
    }
}
