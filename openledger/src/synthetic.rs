//! A synthetic key→value language for influence experiments: every sentence is a key token
//! followed by distractor tokens and a separator, and its label is the value a lookup table
//! assigns to the key. A datanet of such sentences with a known fraction of flipped labels is
//! the ground truth that noisy-label detection and the linear datamodeling score are measured
//! against.
//!
//! Token ids: `0` BOS, `1` SEP, `2 .. 2 + values` the value tokens, then `keys` key tokens, then
//! `alphabet` distractor tokens. A record's content is its text form
//! `"k<key> d<a> d<b> … -> v<value>"`, which [`KeyValueTask::example`] parses back.
//!
//! ```
//! use openledger::synthetic::KeyValueTask;
//!
//! let task = KeyValueTask { keys: 8, values: 4, alphabet: 6, distractors: 3 };
//! let table = task.table(1);
//! let data = task.datanet("kv", &table, 40, 0.2, 4, 7).unwrap();
//! assert_eq!(data.datanet.records().len(), 40);
//! assert_eq!(data.labels.iter().filter(|l| l.flipped).count(), 8);
//! let first = &data.labels[0];
//! let ex = task.example(&data.datanet.records()[0].content).unwrap();
//! assert_eq!(*ex.tokens.last().unwrap(), task.value_token(first.given));
//! ```

use openledger_core::datanet::{Datanet, DatanetRecord, Insert};
use openledger_core::error::{Classify, ErrorKind};
use openledger_core::{Address, ContentId};
use openledger_train::Example;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// Why a synthetic sentence or datanet could not be made or read.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SyntheticError {
    /// A record's content is not a sentence of the task's language.
    #[error("not a sentence of the key-value language: {content:?} ({reason})")]
    Parse {
        /// The content (first 80 characters).
        content: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Settings the generator cannot honour.
    #[error("invalid synthetic settings: {0}")]
    Invalid(String),
}

impl Classify for SyntheticError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// The shape of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyValueTask {
    /// Number of keys.
    pub keys: usize,
    /// Number of values (labels).
    pub values: usize,
    /// Number of distractor tokens.
    pub alphabet: usize,
    /// Distractors per sentence.
    pub distractors: usize,
}

/// One sentence: its key, distractors and the label it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sentence {
    /// The key.
    pub key: usize,
    /// The distractors, in order.
    pub distractors: Vec<usize>,
    /// The value it is labelled with.
    pub value: usize,
}

/// Ground truth of one datanet record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordLabel {
    /// The record's id.
    pub record: ContentId,
    /// Its contributor.
    pub contributor: Address,
    /// The value the table assigns to its key.
    pub truth: usize,
    /// The value it carries.
    pub given: usize,
    /// Whether `given != truth`.
    pub flipped: bool,
}

/// A generated datanet with its ground truth, in record order.
#[derive(Clone, Debug)]
pub struct LabeledDatanet {
    /// The records (committed as version 1).
    pub datanet: Datanet,
    /// Ground truth per record.
    pub labels: Vec<RecordLabel>,
}

/// The contributor address of contributor number `i` (a readable, deterministic address).
pub fn contributor(i: usize) -> Address {
    let mut a = [0u8; 20];
    a[0] = 0xc0;
    a[12..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    Address::from(a)
}

impl KeyValueTask {
    /// Token id of BOS.
    pub const BOS: u32 = 0;
    /// Token id of the separator before the value.
    pub const SEP: u32 = 1;

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        2 + self.values + self.keys + self.alphabet
    }

    /// Token of value `v`.
    pub fn value_token(&self, v: usize) -> u32 {
        (2 + v) as u32
    }

    /// Token of key `k`.
    pub fn key_token(&self, k: usize) -> u32 {
        (2 + self.values + k) as u32
    }

    /// Token of distractor `d`.
    pub fn distractor_token(&self, d: usize) -> u32 {
        (2 + self.values + self.keys + d) as u32
    }

    /// The value of a value token, if it is one.
    pub fn value_of(&self, token: u32) -> Option<usize> {
        let t = token as usize;
        (2..2 + self.values).contains(&t).then(|| t - 2)
    }

    /// A seeded lookup table: the value of each key (every value used when `keys ≥ values`).
    pub fn table(&self, seed: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut t: Vec<usize> = (0..self.keys).map(|k| k % self.values.max(1)).collect();
        t.shuffle(&mut rng);
        t
    }

    /// A random sentence labelled by `table` (which must give a value below `values` for
    /// every key).
    pub fn sentence(
        &self,
        table: &[usize],
        rng: &mut impl Rng,
    ) -> Result<Sentence, SyntheticError> {
        self.check(table)?;
        Ok(self.draw(table, rng))
    }

    fn draw(&self, table: &[usize], rng: &mut impl Rng) -> Sentence {
        let key = rng.random_range(0..self.keys);
        Sentence {
            key,
            distractors: (0..self.distractors)
                .map(|_| rng.random_range(0..self.alphabet))
                .collect(),
            value: table[key],
        }
    }

    /// The prompt tokens of a sentence: BOS, key, distractors, SEP.
    pub fn prompt(&self, s: &Sentence) -> Vec<u32> {
        let mut p = vec![Self::BOS, self.key_token(s.key)];
        p.extend(s.distractors.iter().map(|&d| self.distractor_token(d)));
        p.push(Self::SEP);
        p
    }

    /// The training example of a sentence: the prompt, then its value (loss on the value).
    pub fn sentence_example(&self, s: &Sentence) -> Example {
        Example::prompt_response(&self.prompt(s), &[self.value_token(s.value)])
    }

    /// The text form of a sentence (a record's content).
    pub fn text(&self, s: &Sentence) -> String {
        let mut t = format!("k{}", s.key);
        for d in &s.distractors {
            t.push_str(&format!(" d{d}"));
        }
        t.push_str(&format!(" -> v{}", s.value));
        t
    }

    /// Parses the text form back into a sentence.
    pub fn parse(&self, content: &str) -> Result<Sentence, SyntheticError> {
        let bad = |reason: String| SyntheticError::Parse {
            content: content.chars().take(80).collect(),
            reason,
        };
        let (lhs, rhs) = content
            .split_once(" -> ")
            .ok_or_else(|| bad("no \" -> \"".into()))?;
        let num = |tok: &str, prefix: char, limit: usize| -> Result<usize, SyntheticError> {
            let n: usize = tok
                .strip_prefix(prefix)
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| bad(format!("{tok:?} is not {prefix}<number>")))?;
            if n >= limit {
                return Err(bad(format!("{tok:?} is out of range (limit {limit})")));
            }
            Ok(n)
        };
        let mut parts = lhs.split(' ');
        let key = num(parts.next().unwrap_or(""), 'k', self.keys)?;
        let distractors = parts
            .map(|t| num(t, 'd', self.alphabet))
            .collect::<Result<Vec<_>, _>>()?;
        if distractors.len() != self.distractors {
            return Err(bad(format!(
                "{} distractors, expected {}",
                distractors.len(),
                self.distractors
            )));
        }
        Ok(Sentence {
            key,
            distractors,
            value: num(rhs, 'v', self.values)?,
        })
    }

    /// The training example of a record's content.
    pub fn example(&self, content: &str) -> Result<Example, SyntheticError> {
        Ok(self.sentence_example(&self.parse(content)?))
    }

    /// `n` distinct sentences labelled by `table`, drawn from `seed`.
    pub fn sentences(
        &self,
        table: &[usize],
        n: usize,
        seed: u64,
    ) -> Result<Vec<Sentence>, SyntheticError> {
        self.check(table)?;
        let space = (self.keys as f64) * (self.alphabet as f64).powi(self.distractors as i32);
        if (n as f64) > space / 2.0 {
            return Err(SyntheticError::Invalid(format!(
                "{n} distinct sentences asked from a space of {space}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let s = self.draw(table, &mut rng);
            if seen.insert((s.key, s.distractors.clone())) {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn check(&self, table: &[usize]) -> Result<(), SyntheticError> {
        if self.keys == 0 || self.values < 2 || self.alphabet == 0 {
            return Err(SyntheticError::Invalid(format!(
                "need keys ≥ 1, values ≥ 2, alphabet ≥ 1: {self:?}"
            )));
        }
        if table.len() != self.keys || table.iter().any(|&v| v >= self.values) {
            return Err(SyntheticError::Invalid(format!(
                "table of {} entries for {} keys and {} values",
                table.len(),
                self.keys,
                self.values
            )));
        }
        Ok(())
    }

    /// A datanet of `n` distinct sentences labelled by `table`, of which exactly
    /// `round(flip_fraction · n)` (chosen at random) carry a different, random value; records
    /// are spread round-robin over `contributors` contributors ([`contributor`]).
    pub fn datanet(
        &self,
        name: &str,
        table: &[usize],
        n: usize,
        flip_fraction: f64,
        contributors: usize,
        seed: u64,
    ) -> Result<LabeledDatanet, SyntheticError> {
        if !(0.0..=1.0).contains(&flip_fraction) || contributors == 0 {
            return Err(SyntheticError::Invalid(format!(
                "flip fraction {flip_fraction} must be in [0, 1] and contributors ({contributors}) ≥ 1"
            )));
        }
        let mut sentences = self.sentences(table, n, seed)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xf11f);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let flips = (flip_fraction * n as f64).round() as usize;
        let mut flipped = vec![false; n];
        for &i in &order[..flips] {
            let s = &mut sentences[i];
            let shift = rng.random_range(1..self.values);
            s.value = (s.value + shift) % self.values;
            flipped[i] = true;
        }
        let mut datanet = Datanet::new(name);
        let mut labels = Vec::with_capacity(n);
        for (i, s) in sentences.iter().enumerate() {
            let who = contributor(i % contributors);
            let record = DatanetRecord::new(self.text(s), who, Default::default(), "CC0-1.0");
            let id = record.hash;
            if let Insert::Duplicate(j) = datanet.insert(record) {
                return Err(SyntheticError::Invalid(format!(
                    "sentence {i} duplicates record {j}"
                )));
            }
            labels.push(RecordLabel {
                record: id,
                contributor: who,
                truth: table[s.key],
                given: s.value,
                flipped: flipped[i],
            });
        }
        datanet
            .commit()
            .map_err(|e| SyntheticError::Invalid(e.to_string()))?;
        Ok(LabeledDatanet { datanet, labels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> KeyValueTask {
        KeyValueTask {
            keys: 8,
            values: 4,
            alphabet: 5,
            distractors: 2,
        }
    }

    #[test]
    fn text_round_trips_and_tokens_are_disjoint() {
        let t = task();
        let table = t.table(3);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let s = t.sentence(&table, &mut rng).unwrap();
            assert_eq!(t.parse(&t.text(&s)).unwrap(), s);
            let ex = t.sentence_example(&s);
            assert!(ex.tokens.iter().all(|&x| (x as usize) < t.vocab()));
            assert_eq!(ex.targets(), 1);
            assert_eq!(t.value_of(*ex.tokens.last().unwrap()), Some(s.value));
        }
        assert_eq!(t.value_of(KeyValueTask::SEP), None);
        // A table that does not fit the task is refused, not indexed out of bounds.
        assert!(matches!(
            t.sentence(&table[..3], &mut rng),
            Err(SyntheticError::Invalid(_))
        ));
        let empty = KeyValueTask { keys: 0, ..t };
        assert!(matches!(
            empty.sentence(&[], &mut rng),
            Err(SyntheticError::Invalid(_))
        ));
    }

    #[test]
    fn bad_content_is_a_parse_error_naming_it() {
        let t = task();
        for bad in [
            "",
            "k1 d0 -> v9",
            "k1 d0 d1 v2",
            "k99 d0 d1 -> v0",
            "k1 d0 -> v0",
            "kx d0 d1 -> v0",
        ] {
            match t.parse(bad) {
                Err(SyntheticError::Parse { content, .. }) => assert_eq!(content, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn datanet_flips_exactly_the_requested_fraction_with_wrong_values() {
        let t = task();
        let table = t.table(5);
        let d = t.datanet("x", &table, 50, 0.2, 3, 9).unwrap();
        assert_eq!(d.labels.iter().filter(|l| l.flipped).count(), 10);
        for (l, r) in d.labels.iter().zip(d.datanet.records()) {
            assert_eq!(l.flipped, l.given != l.truth);
            assert_eq!(l.record, r.hash);
            assert_eq!(t.parse(&r.content).unwrap().value, l.given);
        }
        assert_eq!(d.datanet.versions().len(), 1);
        // Same seed, same datanet.
        let again = t.datanet("x", &table, 50, 0.2, 3, 9).unwrap();
        assert_eq!(again.labels, d.labels);
        assert!(matches!(
            t.datanet("x", &table, 50, 1.5, 3, 9),
            Err(SyntheticError::Invalid(_))
        ));
    }
}
