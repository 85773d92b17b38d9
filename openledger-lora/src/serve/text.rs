//! Detokenizing a growing output a few tokens at a time.

/// The text of a growing output, kept up to date a few tokens at a time: each call decodes a
/// short window (the tokens of the previous piece, then the new ones) instead of the whole
/// output, the windowed method of text-generation-inference and of `tokenizers`'
/// `DecodeStream`.
///
/// The window's older tokens give the new ones their context, so leading spaces (SentencePiece
/// strips the first token's), word-piece joins and characters whose bytes span tokens come out
/// as in the whole output's text. While the window's text ends in an unfinished character
/// (U+FFFD), nothing is released until the token that completes it arrives;
/// [`finish`](Self::finish) releases what is still held. A window whose text does not start
/// with its older tokens' text (a tokenizer whose merges reach further back) is settled by
/// decoding the whole output once. The cost per token is that of the window, so a request's
/// text costs time linear in its length, not quadratic.
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
/// assert_eq!(text.extend(&[0, 1], decode).unwrap(), ""); // half a character: held back
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
    /// Tokens before this are in `text`.
    read: usize,
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

    /// Takes in the tokens of `output` not seen yet and returns the text they add (empty while
    /// they end in an unfinished character). `output` is the whole output: what the last call
    /// saw followed by new tokens. An output shorter than the last one starts over. `decode` is
    /// the tokenizer's decode of a token list; its error is returned as is and leaves `self` as
    /// it was.
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
        let grew = window.len() > before.len();
        if hold_unfinished && (!grew || window.ends_with('\u{FFFD}')) {
            self.seen = output.len();
            return Ok("");
        }
        if grew {
            match window.strip_prefix(before.as_str()) {
                Some(piece) => self.text.push_str(piece),
                None => {
                    // The new tokens changed their context's text: settle by the whole output.
                    // Text already released cannot be taken back, so only what the whole text
                    // holds beyond its length is released.
                    let whole = decode(output)?;
                    let from = self.text.len();
                    if whole.len() > from && whole.is_char_boundary(from) {
                        self.text.push_str(&whole[from..]);
                    }
                }
            }
        }
        self.prefix = self.read;
        self.read = output.len();
        self.seen = output.len();
        Ok(&self.text[start..])
    }
}

/// The answer of a streamed output, handed out in pieces as tokens arrive: the output's
/// [`IncrementalText`] up to the first stop string, less what may still turn out to begin one.
///
/// While the output runs, the last `longest stop string − 1` bytes are held back (they could
/// be the start of a stop string the next token completes), so no piece ever has to be taken
/// back; once a stop string appears, or the output is [finished](Self::finish), the rest up to
/// the stop string is handed out. The pieces joined are the text the stream ends with: the
/// whole text, or the text before its first stop string (as
/// [`FinishReason::visible_text`](super::FinishReason::visible_text) cuts it).
///
/// ```
/// use openledger_lora::serve::TextPieces;
///
/// let words = ["The", " dose", " is", " 5", " mg.", "\n\n", "Q:"];
/// let decode = |ids: &[u32]| -> Result<String, std::convert::Infallible> {
///     Ok(ids.iter().map(|&i| words[i as usize]).collect())
/// };
/// let mut pieces = TextPieces::new(&["\n\nQ:".to_string()]);
/// let mut shown = String::new();
/// for n in 1..=words.len() {
///     let ids: Vec<u32> = (0..n as u32).collect();
///     shown += pieces.next(&ids, decode).unwrap();
/// }
/// let ids: Vec<u32> = (0..words.len() as u32).collect();
/// shown += pieces.finish(&ids, decode).unwrap();
/// assert_eq!(shown, "The dose is 5 mg.");
/// ```
#[derive(Debug, Clone, Default)]
pub struct TextPieces {
    text: IncrementalText,
    stop_strings: Vec<String>,
    /// Bytes held back while the output runs: the longest stop string's, less one.
    hold: usize,
    /// Bytes of the text handed out.
    given: usize,
    /// Where the answer ends, once known (a stop string's start, or the finished text's end).
    end: Option<usize>,
}

impl TextPieces {
    /// Pieces of an output that ends at the first of `stop_strings` (none: the whole text).
    pub fn new(stop_strings: &[String]) -> Self {
        Self {
            stop_strings: stop_strings.to_vec(),
            hold: stop_strings
                .iter()
                .map(|s| s.len().saturating_sub(1))
                .max()
                .unwrap_or(0),
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
        self.end.is_some()
    }

    /// Takes in `output` (the whole output so far, see [`IncrementalText::extend`]) and returns
    /// the next piece of the answer: empty while nothing new is final. An output shorter than
    /// the last one starts over, handing the answer out again from its start. An error from
    /// `decode` is returned as is and leaves `self` as it was.
    pub fn next<E>(
        &mut self,
        output: &[u32],
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<&str, E> {
        self.update(output, false, decode)?;
        Ok(self.hand_out(false))
    }

    /// Takes in `output` once it will not grow any more and returns the rest of the answer.
    pub fn finish<E>(
        &mut self,
        output: &[u32],
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<&str, E> {
        self.update(output, true, decode)?;
        Ok(self.hand_out(true))
    }

    /// Takes in `output` (`finished`: it will not grow any more) without handing anything out,
    /// to read [`text`](Self::text) up to date; the pieces not handed out yet stay for
    /// [`next`](Self::next) and [`finish`](Self::finish).
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
        if self.end.is_none() {
            // A stop string cannot begin before what was handed out (that much was held back),
            // so the search starts there.
            let rest = &self.text.text()[self.given..];
            self.end = self
                .stop_strings
                .iter()
                .filter_map(|s| rest.find(s.as_str()))
                .min()
                .map(|at| self.given + at);
        }
        Ok(())
    }

    /// Hands out what is final of the text taken in: all of it up to the answer's end once that
    /// is known or the output `finished`, else all but the held-back bytes.
    fn hand_out(&mut self, finished: bool) -> &str {
        let text = self.text.text();
        let until = match self.end {
            Some(end) => end,
            None if finished => text.len(),
            None => {
                let mut until = text.len().saturating_sub(self.hold).max(self.given);
                while !text.is_char_boundary(until) {
                    until -= 1;
                }
                until
            }
        };
        let from = self.given;
        self.given = until.max(from);
        &self.text.text()[from..self.given]
    }
}
