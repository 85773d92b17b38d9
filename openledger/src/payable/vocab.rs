//! The word-level vocabulary of a datanet, and the bag-of-words embedder its RAG index uses.

use std::collections::{BTreeSet, HashMap};

use openledger_poa::rag::Embedder;

/// A word-level vocabulary: `<unk>` (0), `<s>` (1, starts every prompt), `</s>` (2, ends every
/// answer), then the distinct lower-cased words of the texts it was built from, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    /// Unknown word.
    pub const UNK: u32 = 0;
    /// Start of a prompt.
    pub const BOS: u32 = 1;
    /// End of an answer.
    pub const EOS: u32 = 2;

    /// The vocabulary of `texts` (split on whitespace, lower-cased).
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let distinct: BTreeSet<String> = texts
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(str::to_lowercase)
            .collect();
        let words: Vec<String> = ["<unk>", "<s>", "</s>"]
            .into_iter()
            .map(String::from)
            .chain(distinct)
            .collect();
        let ids = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Self { words, ids }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether only the three special tokens are present.
    pub fn is_empty(&self) -> bool {
        self.words.len() <= 3
    }

    /// The token ids of `text`'s words (unknown words become [`Vocab::UNK`]).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.split_whitespace()
            .map(|w| *self.ids.get(&w.to_lowercase()).unwrap_or(&Self::UNK))
            .collect()
    }

    /// `<s>` followed by the prompt's words.
    pub fn prompt(&self, text: &str) -> Vec<u32> {
        std::iter::once(Self::BOS)
            .chain(self.encode(text))
            .collect()
    }

    /// The answer's words followed by `</s>`.
    pub fn answer(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(text);
        ids.push(Self::EOS);
        ids
    }

    /// The word of `id` (`<unk>` for ids outside the vocabulary).
    pub fn word(&self, id: u32) -> &str {
        self.words.get(id as usize).map_or("<unk>", String::as_str)
    }

    /// The words of `ids`, special tokens left out, joined by spaces.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&id| id > Self::EOS)
            .map(|&id| self.word(id))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A feature-hashing bag-of-words embedder: each lower-cased word adds 1 to the coordinate its
/// FNV-1a hash selects. With cosine similarity it ranks records by shared words; it needs no
/// model, which suits the small shipped datanet (a sentence-embedding model plugs in through the
/// same [`Embedder`] trait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashingEmbedder {
    dim: usize,
}

impl HashingEmbedder {
    /// An embedder into `dim` coordinates (at least 1).
    pub fn new(dim: usize) -> Self {
        Self { dim: dim.max(1) }
    }
}

impl Embedder for HashingEmbedder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, text: &str) -> openledger_poa::Result<Vec<f32>> {
        let mut v = vec![0f32; self.dim];
        for w in text.split_whitespace() {
            let h = w
                .to_lowercase()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
            v[(h % self.dim as u64) as usize] += 1.0;
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_specials_frame_prompts_and_answers() {
        let v = Vocab::from_texts(["What does aspirin treat", "pain and fever"]);
        assert_eq!(v.len(), 3 + 7);
        let p = v.prompt("what does ASPIRIN treat");
        assert_eq!(p[0], Vocab::BOS);
        assert_eq!(v.decode(&p), "what does aspirin treat");
        let a = v.answer("pain and fever");
        assert_eq!(*a.last().unwrap(), Vocab::EOS);
        assert_eq!(v.decode(&a), "pain and fever");
        assert_eq!(v.encode("ibuprofen"), vec![Vocab::UNK]);
        assert_eq!(v.word(999), "<unk>");
    }

    #[test]
    fn the_embedder_counts_words() {
        let e = HashingEmbedder::new(64);
        let v = e.embed("pain pain fever").unwrap();
        assert_eq!(v.iter().sum::<f32>(), 3.0);
        assert!(v.contains(&2.0));
    }
}
