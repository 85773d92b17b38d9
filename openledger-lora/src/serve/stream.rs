//! What the reader of one request's events has seen: the tokens, how the request ended, and
//! its text handed out in pieces. The Python and Node token streams keep one each.

use super::request::{Event, RequestError, RequestStats};
use super::sampling::FinishReason;
use super::text::TextPieces;

/// How a request ended, as the reader of its events saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEnd {
    /// It finished ([`Event::Finished`]).
    Finished(FinishReason, RequestStats),
    /// It failed ([`Event::Failed`]).
    Failed(RequestError, RequestStats),
    /// Its events stopped without a last event: the engine was closed or stopped.
    Closed,
}

/// The events of one request as they were read: its tokens, its end, and its text (with a
/// decoder), kept a few tokens at a time.
///
/// ```
/// use openledger_lora::serve::{Event, FinishReason, RequestStats, StreamEnd, StreamLog};
///
/// let words = ["Aspirin", ".", "\n\n", "Q:"];
/// let decode = |ids: &[u32]| -> Result<String, std::convert::Infallible> {
///     Ok(ids.iter().map(|&i| words[i as usize]).collect())
/// };
/// let mut log = StreamLog::new(&["\n\nQ".to_string()]);
/// let mut printed = String::new();
/// for (index, token) in [0u32, 1, 2, 3].into_iter().enumerate() {
///     assert_eq!(log.record(Some(Event::Token { token, index, logprobs: None })), Some(token));
///     printed += log.new_text(decode).unwrap();
/// }
/// let reason = FinishReason::StopString("\n\nQ".into());
/// log.record(Some(Event::Finished { reason, stats: RequestStats::default() }));
/// printed += log.new_text(decode).unwrap();
/// assert_eq!(printed, "Aspirin.");
/// assert_eq!(log.text(decode).unwrap(), "Aspirin.");
/// assert_eq!(log.stop_string(), Some("\n\nQ"));
/// assert_eq!(log.finish_reason().map(FinishReason::name), Some("stop_string"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamLog {
    tokens: Vec<u32>,
    end: Option<StreamEnd>,
    /// The text of `tokens` and what of it [`new_text`](Self::new_text) handed out.
    pieces: TextPieces,
}

impl StreamLog {
    /// The log of a request that ends at the first of `stop_strings`.
    pub fn new(stop_strings: &[String]) -> Self {
        Self {
            pieces: TextPieces::new(stop_strings),
            ..Self::default()
        }
    }

    /// Records the next event read (`None`: the events stopped without a last event) and
    /// returns the token when it was one. Nothing is recorded once the request has ended.
    pub fn record(&mut self, event: Option<Event>) -> Option<u32> {
        if self.end.is_some() {
            return None;
        }
        match event {
            Some(Event::Token { token, .. }) => {
                self.tokens.push(token);
                return Some(token);
            }
            Some(Event::Finished { reason, stats }) => {
                self.end = Some(StreamEnd::Finished(reason, stats))
            }
            Some(Event::Failed { error, stats }) => {
                self.end = Some(StreamEnd::Failed(error, stats))
            }
            None => self.end = Some(StreamEnd::Closed),
        }
        None
    }

    /// The tokens read so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How the request ended, once it has.
    pub fn end(&self) -> Option<&StreamEnd> {
        self.end.as_ref()
    }

    /// The text of the tokens read so far (through `decode`, the model's detokenizer): a
    /// character whose bytes span tokens shows once they are all read; once the request ended
    /// on a stop string, the text before it. Each call decodes only the tokens read since the
    /// last one. An error from `decode` is returned as is.
    pub fn text<E>(
        &mut self,
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<String, E> {
        self.pieces
            .update(&self.tokens, self.end.is_some(), decode)?;
        let text = self.pieces.text().to_owned();
        Ok(match &self.end {
            Some(StreamEnd::Finished(reason, _)) => reason.visible_text(text),
            _ => text,
        })
    }

    /// The answer's text that became final since the last call ([`TextPieces::next_piece`]):
    /// joined, the pieces are [`text`](Self::text) at the end.
    pub fn new_text<E>(
        &mut self,
        decode: impl FnMut(&[u32]) -> Result<String, E>,
    ) -> Result<&str, E> {
        self.pieces
            .next_piece(&self.tokens, self.end.is_some(), decode)
    }

    /// Why the request finished, once it has (not when it failed).
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        match &self.end {
            Some(StreamEnd::Finished(reason, _)) => Some(reason),
            _ => None,
        }
    }

    /// The stop string that ended the request, if one did.
    pub fn stop_string(&self) -> Option<&str> {
        match self.finish_reason()? {
            FinishReason::StopString(s) => Some(s),
            _ => None,
        }
    }

    /// The request's statistics once it finished or failed.
    pub fn stats(&self) -> Option<&RequestStats> {
        match &self.end {
            Some(StreamEnd::Finished(_, s) | StreamEnd::Failed(_, s)) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token `i` is the `i`-th of "a", "b", "<".
    fn decode(ids: &[u32]) -> Result<String, String> {
        Ok(ids.iter().map(|&i| ["a", "b", "<"][i as usize]).collect())
    }

    #[test]
    fn nothing_is_recorded_after_the_end_and_failures_keep_their_stats() {
        let mut log = StreamLog::new(&[]);
        assert_eq!(
            log.record(Some(Event::Token {
                token: 1,
                index: 0,
                logprobs: None
            })),
            Some(1)
        );
        let stats = RequestStats {
            tokens_generated: 1,
            ..RequestStats::default()
        };
        let error = RequestError::EmptyPrompt;
        log.record(Some(Event::Failed {
            error: error.clone(),
            stats: stats.clone(),
        }));
        assert_eq!(
            log.record(Some(Event::Token {
                token: 0,
                index: 1,
                logprobs: None
            })),
            None
        );
        assert_eq!(log.record(None), None);
        assert_eq!(log.tokens(), [1]);
        assert_eq!(log.end(), Some(&StreamEnd::Failed(error, stats.clone())));
        assert_eq!(log.stats(), Some(&stats));
        assert_eq!(log.finish_reason(), None);
        assert_eq!(log.text(decode).unwrap(), "b");
    }

    #[test]
    fn a_closed_stream_has_no_stats_and_hands_out_the_rest() {
        let mut log = StreamLog::new(&["<b".to_string()]);
        log.record(Some(Event::Token {
            token: 0,
            index: 0,
            logprobs: None,
        }));
        log.record(Some(Event::Token {
            token: 2,
            index: 1,
            logprobs: None,
        }));
        // "<" could begin the stop string "<b": it waits while the request runs.
        assert_eq!(log.new_text(decode).unwrap(), "a");
        log.record(None);
        assert_eq!(log.end(), Some(&StreamEnd::Closed));
        assert_eq!(log.stats(), None);
        assert_eq!(log.new_text(decode).unwrap(), "<");
        assert_eq!(log.new_text(decode).unwrap(), "");
    }
}
