//! Detokenizing a growing output a few tokens at a time, and handing its answer out in pieces.

/// The replacement character a lossy decode puts where a character's bytes are not all there.
const UNFINISHED: char = '\u{FFFD}';

/// The text of a growing output, kept up to date a few tokens at a time: each call decodes a
/// short window (the tokens of the previous piece, then the new ones) instead of the whole
/// output, the windowed method of text-generation-inference and of `tokenizers`'
/// `DecodeStream`.
///
/// The window's older tokens give the new ones their context, so leading spaces (SentencePiece
/// strips the first token's), word-piece joins and characters whose bytes span tokens come out
/// as in the whole output's text. When the window's text ends in an unfinished character
/// (U+FFFD), the text before it is released and that character waits for the token that
/// completes it; [`finish`](Self::finish) releases it as it stands. The cost per token is that
/// of the window, so a request's text costs time linear in its length — except while tokens
/// add no text at all (skipped special tokens, a character that never completes), when the
/// window grows until text comes.
///
/// A window whose text does not extend its older tokens' text (a tokenizer whose decode of
/// later tokens changes earlier text) is settled by decoding the whole output: what it holds
/// beyond the text released so far is released. Released text is never taken back, so if the
/// whole text no longer starts with it, only the window's text past what it shares with its
/// context is added.
///
/// ```
/// use openledger_lora::serve::IncrementalText;
///
/// // A byte-level vocabulary: "é" is two bytes, one per token.
/// let vocab: [&[u8]; 4] = [b"caf", &[0xC3], &[0xA9], b"!"];
/// let decode = |ids: &[u32]| -> Result<String, std::convert::Infallible> {
///     let bytes: Vec<u8> = ids.iter().flat_map(|&i| vocab[i as usize].to_vec()).collect();
///     Ok(String::from_utf8_lossy(&bytes).into_owned())
/// };
/// let mut text = IncrementalText::new();
/// assert_eq!(text.extend(&[0], decode).unwrap(), "caf");
/// assert_eq!(text.extend(&[0, 1], decode).unwrap(), ""); // half a character: waits
/// assert_eq!(text.extend(&[0, 1, 2], decode).unwrap(), "é");
/// assert_eq!(text.extend(&[0, 1, 2, 3], decode).unwrap(), "!");
/// assert_eq!(text.text(), "café!");
/// ```
#[derive(Debug, Clone, Default)]
pub struct IncrementalText {
    text: String,
    /// Tokens of the output taken in so far.
    seen: usize,
    /// The window starts here: tokens `prefix..read` are context, already in `text`.
    prefix: usize,
    /// The window's tokens from here on are new; their text is in `text` only as far as
    /// `released` says.
    read: usize,
    /// Bytes of the new tokens' text already released (the part before an unfinished
    /// character).
    released: usize,
}

impl IncrementalText {
    /// No text yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text released so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// How many tokens of the output it has taken in.
    pub fn tokens_seen(&self) -> usize {
        self.seen
    }

    /// Takes in the tokens of `output` not seen yet and returns the text they add (an
    /// unfinished character at the end waits for the next call). `output` is the whole output:
    /// what the last call saw followed by new tokens. An output shorter than the last one starts
    /// over. `decode` is the tokenizer's decode of a token list; its error is returned as is and
    /// leaves `self` as it was.
    pub fn extend<E>(
        &mut self,
        output: &[u32],
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<&str, E> {
        self.take(output, decode, true)
    }

    /// Takes in `output` as [`extend`](Self::extend) does, then releases whatever the window
    /// still holds back (an unfinished character stays U+FFFD, as in the whole output's text):
    /// for an output that will not grow any more.
    pub fn finish<E>(
        &mut self,
        output: &[u32],
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<&str, E> {
        self.take(output, decode, false)
    }

    fn take<E>(
        &mut self,
        output: &[u32],
        mut decode: impl FnMut(&[u32]) -> Result<String, E>,
        hold_unfinished: bool,
    ) -> Result<&str, E> {
        if output.len() < self.seen {
            let mut fresh = Self::default();
            fresh.take(output, decode, hold_unfinished)?;
            *self = fresh;
            return Ok(&self.text);
        }
        let start = self.text.len();
        if self.read == output.len() || (hold_unfinished && self.seen == output.len()) {
            self.seen = output.len();
            return Ok("");
        }
        let before = decode(&output[self.prefix..self.read])?;
        let window = decode(&output[self.prefix..])?;
        let Some(new) = window.strip_prefix(before.as_str()) else {
            // The new tokens changed their context's text.
            let whole = decode(output)?;
            let rest = match whole.strip_prefix(self.text.as_str()) {
                Some(rest) => rest,
                None => {
                    let mut shared = before
                        .bytes()
                        .zip(window.bytes())
                        .take_while(|(a, b)| a == b)
                        .count();
                    while !window.is_char_boundary(shared) {
                        shared -= 1;
                    }
                    &window[shared..]
                }
            };
            self.text.push_str(rest);
            self.advance(output.len());
            return Ok(&self.text[start..]);
        };
        let unfinished = hold_unfinished && new.ends_with(UNFINISHED);
        let complete = if unfinished {
            new.trim_end_matches(UNFINISHED)
        } else {
            new
        };
        // What was released of it stays as it was (`get` is `None` should the window's text
        // have changed there).
        if let Some(more) = complete.get(self.released..).filter(|m| !m.is_empty()) {
            self.text.push_str(more);
            self.released = complete.len();
        }
        if unfinished || new.is_empty() {
            // The window keeps its tokens: the unfinished character, or tokens with no text
            // yet, need their context next time.
            self.seen = output.len();
        } else {
            self.advance(output.len());
        }
        Ok(&self.text[start..])
    }

    /// Makes the tokens up to `len` context: the next window starts with the new tokens just
    /// released.
    fn advance(&mut self, len: usize) {
        self.prefix = self.read;
        self.read = len;
        self.seen = len;
        self.released = 0;
    }
}

/// Where the earliest of `stops` begins in `text`, and which it is (the first listed on a tie).
pub(crate) fn earliest_stop<'s>(text: &str, stops: &'s [String]) -> Option<(usize, &'s str)> {
    stops
        .iter()
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str())))
        .min_by_key(|&(at, _)| at)
}

/// The answer of a streamed output, handed out in pieces as tokens arrive: the output's
/// [`IncrementalText`] up to the first stop string, less what may still turn out to begin one.
///
/// While the output runs, the longest end of the text that is the beginning of a stop string
/// is held back (the next token could complete it), so no piece ever has to be taken back; once
/// a stop string appears, or the output has finished, the rest up to the stop string is handed
/// out. The pieces joined are the text the stream ends with: the whole text, or the text
/// before its earliest stop string (as [`FinishReason::visible_text`](super::FinishReason::visible_text)
/// cuts it, with the stop string [`StopChecker`](super::StopChecker) names).
///
/// ```
/// use openledger_lora::serve::TextPieces;
///
/// let words = ["The", " dose", " is", " 5", " mg.", "\n", "\n", "Q:"];
/// let decode = |ids: &[u32]| -> Result<String, std::convert::Infallible> {
///     Ok(ids.iter().map(|&i| words[i as usize]).collect())
/// };
/// let mut pieces = TextPieces::new(&["\n\nQ:".to_string()]);
/// let ids: Vec<u32> = (0..words.len() as u32).collect();
/// let got: Vec<String> = (1..=ids.len())
///     .map(|n| pieces.next_piece(&ids[..n], false, decode).unwrap().to_owned())
///     .collect();
/// // "\n" and "\n\n" could begin the stop string: they wait, then it completes.
/// assert_eq!(got, ["The", " dose", " is", " 5", " mg.", "", "", ""]);
/// assert!(pieces.reached_stop());
/// assert_eq!(pieces.given(), "The dose is 5 mg.");
/// ```
#[derive(Debug, Clone, Default)]
pub struct TextPieces {
    text: IncrementalText,
    stop_strings: Vec<String>,
    /// Bytes of the text handed out.
    given: usize,
    /// Where the earliest stop string begins, once one is in the text.
    stop_at: Option<usize>,
}

impl TextPieces {
    /// Pieces of an output that ends at the first of `stop_strings` (none: the whole text).
    pub fn new(stop_strings: &[String]) -> Self {
        Self {
            stop_strings: stop_strings.to_vec(),
            ..Self::default()
        }
    }

    /// The output's whole text so far (stop string included), as its [`IncrementalText`] keeps
    /// it.
    pub fn text(&self) -> &str {
        self.text.text()
    }

    /// The answer handed out so far.
    pub fn given(&self) -> &str {
        &self.text.text()[..self.given]
    }

    /// Whether the text taken in holds a stop string: the answer is then complete (it ends
    /// before the stop string), and an output being generated can stop.
    pub fn reached_stop(&self) -> bool {
        self.stop_at.is_some()
    }

    /// Takes in `output` (the whole output so far, see [`IncrementalText::extend`];
    /// `finished`: it will not grow any more) and returns the next piece of the answer: what
    /// became final since the last call, empty when nothing did. An output shorter than the
    /// last one starts over, handing the answer out again from its start. An error from
    /// `decode` is returned as is and leaves `self` as it was.
    pub fn next_piece<E>(
        &mut self,
        output: &[u32],
        finished: bool,
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<&str, E> {
        self.update(output, finished, decode)?;
        let text = self.text.text();
        let until = match self.stop_at {
            Some(at) => at,
            None if finished => text.len(),
            None => text.len() - self.held(text),
        };
        let from = self.given;
        self.given = until.max(from);
        Ok(&self.text.text()[from..self.given])
    }

    /// Takes in `output` as [`next_piece`](Self::next_piece) does without handing anything
    /// out, to read [`text`](Self::text) up to date; what is not handed out yet stays for the
    /// next piece.
    pub fn update<E>(
        &mut self,
        output: &[u32],
        finished: bool,
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<(), E> {
        if output.len() < self.text.tokens_seen() {
            let mut fresh = Self::new(&self.stop_strings);
            fresh.update(output, finished, decode)?;
            *self = fresh;
            return Ok(());
        }
        if finished {
            self.text.finish(output, decode)?;
        } else {
            self.text.extend(output, decode)?;
        }
        if self.stop_at.is_none() {
            // A stop string cannot begin before what was handed out (what could begin one was
            // held back), so the search starts there.
            let rest = &self.text.text()[self.given..];
            self.stop_at = earliest_stop(rest, &self.stop_strings).map(|(at, _)| self.given + at);
        }
        Ok(())
    }

    /// Bytes at the end of `text` (past what was handed out) that are the beginning of a stop
    /// string: the longest such end.
    fn held(&self, text: &str) -> usize {
        let open = &text[self.given..];
        self.stop_strings
            .iter()
            .filter_map(|s| {
                (1..s.len().min(open.len() + 1))
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && open.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0)
    }
}
