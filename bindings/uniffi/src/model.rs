//! Running a small model on the device (`openledger_lora::model`): a llama-family decoder loaded
//! from an HF model folder, PEFT adapters attached by name, logits of a prompt, and greedy
//! generation (token ids, or text through the model's `tokenizer.json`).

use std::path::Path;
use std::sync::{Arc, RwLock};

use openledger_lora::model::{self, AdapterSlot, LoadProgress, SeqInput, Tokenizer};

use crate::adapters::LoraAdapter;
use crate::error::OpenLedgerError;

/// Progress of a model load: `done` of `total` in `stage` (`"file"`: safetensors files read,
/// `"layer"`: decoder layers built).
#[uniffi::export(callback_interface)]
pub trait LoadListener: Send + Sync {
    /// Called after each file read and each layer built.
    fn on_progress(&self, stage: String, done: u64, total: u64);
}

/// Receives generated tokens one at a time.
#[uniffi::export(callback_interface)]
pub trait TokenListener: Send + Sync {
    /// Called with each new token id (`index` counts from 0); return `false` to stop.
    fn on_token(&self, index: u32, token: u32) -> bool;
}

/// Receives the answer of a text generation piece by piece.
#[uniffi::export(callback_interface)]
pub trait TextListener: Send + Sync {
    /// Called with each new piece of the answer (never taken back); return `false` to stop.
    fn on_text(&self, piece: String) -> bool;
}

/// A model held on the device with its attached adapters and, when the folder has one, its
/// tokenizer.
#[derive(Debug, uniffi::Object)]
pub struct OnDeviceModel {
    model: RwLock<model::Model>,
    tokenizer: RwLock<Option<Tokenizer>>,
}

fn poisoned<T>(_: T) -> OpenLedgerError {
    OpenLedgerError::Internal("a previous call panicked while holding the model".into())
}

fn load(
    path: &str,
    listener: Option<&dyn LoadListener>,
) -> Result<Arc<OnDeviceModel>, OpenLedgerError> {
    let dir = Path::new(path);
    let model = model::Model::from_dir_with_progress(dir, &mut |p| {
        if let Some(l) = listener {
            match p {
                LoadProgress::FileRead { done, total, .. } => {
                    l.on_progress("file".into(), done as u64, total as u64)
                }
                LoadProgress::LayerBuilt { done, total } => {
                    l.on_progress("layer".into(), done as u64, total as u64)
                }
            }
        }
    })?;
    let tokenizer = if dir.join(model::TOKENIZER_FILE).is_file() {
        Some(Tokenizer::from_model_dir(dir)?)
    } else {
        None
    };
    Ok(Arc::new(OnDeviceModel {
        model: RwLock::new(model),
        tokenizer: RwLock::new(tokenizer),
    }))
}

impl OnDeviceModel {
    fn adapter_id(
        m: &model::Model,
        name: Option<&str>,
    ) -> Result<Option<AdapterSlot>, OpenLedgerError> {
        let Some(name) = name else { return Ok(None) };
        let names = m.adapter_names();
        names
            .iter()
            .position(|n| *n == name)
            .map(|i| Some(AdapterSlot(i)))
            .ok_or_else(|| {
                OpenLedgerError::UnknownId(format!(
                    "no adapter is attached as {name:?} (attached: {names:?})"
                ))
            })
    }

    fn with_tokenizer<T>(
        &self,
        f: impl FnOnce(&Tokenizer) -> Result<T, OpenLedgerError>,
    ) -> Result<T, OpenLedgerError> {
        let guard = self.tokenizer.read().map_err(poisoned)?;
        let tok = guard.as_ref().ok_or_else(|| {
            OpenLedgerError::ModelFormat(
                "the model has no tokenizer: its folder holds no tokenizer.json and none was set"
                    .into(),
            )
        })?;
        f(tok)
    }
}

#[uniffi::export]
impl OnDeviceModel {
    /// Loads `config.json`, the safetensors weights and (when present) `tokenizer.json` from an
    /// HF model folder.
    #[uniffi::constructor]
    pub fn from_dir(path: String) -> Result<Arc<Self>, OpenLedgerError> {
        load(&path, None)
    }

    /// [`OnDeviceModel::from_dir`], reporting each file read and each layer built.
    #[uniffi::constructor]
    pub fn from_dir_with_progress(
        path: String,
        listener: Box<dyn LoadListener>,
    ) -> Result<Arc<Self>, OpenLedgerError> {
        load(&path, Some(listener.as_ref()))
    }

    /// Replaces the tokenizer with one parsed from `tokenizer.json` bytes.
    pub fn set_tokenizer(&self, tokenizer_json: Vec<u8>) -> Result<(), OpenLedgerError> {
        let tok = Tokenizer::from_bytes(&tokenizer_json)?;
        *self.tokenizer.write().map_err(poisoned)? = Some(tok);
        Ok(())
    }

    /// Vocabulary size of the model.
    pub fn vocab_size(&self) -> Result<u64, OpenLedgerError> {
        Ok(self.model.read().map_err(poisoned)?.config().vocab_size as u64)
    }

    /// Validates `adapter` against the model and attaches it under `name`; a name already
    /// attached is [`OpenLedgerError::State`], an adapter for another base
    /// [`OpenLedgerError::BaseMismatch`] (the model is unchanged then).
    pub fn attach_adapter(
        &self,
        name: String,
        adapter: Arc<LoraAdapter>,
    ) -> Result<(), OpenLedgerError> {
        let mut m = self.model.write().map_err(poisoned)?;
        if m.adapter_names().contains(&name.as_str()) {
            return Err(OpenLedgerError::State(format!(
                "an adapter is already attached as {name:?}"
            )));
        }
        m.attach_adapter(&name, &adapter.inner)?;
        Ok(())
    }

    /// Names of the attached adapters, in attach order.
    pub fn adapter_names(&self) -> Result<Vec<String>, OpenLedgerError> {
        let m = self.model.read().map_err(poisoned)?;
        Ok(m.adapter_names().into_iter().map(str::to_string).collect())
    }

    /// Logits of every position of `tokens` (`[len, vocab]`, row-major) with `adapter` (or the
    /// base model when `None`).
    pub fn forward(
        &self,
        adapter: Option<String>,
        tokens: Vec<u32>,
    ) -> Result<Vec<f32>, OpenLedgerError> {
        let m = self.model.read().map_err(poisoned)?;
        let adapter = Self::adapter_id(&m, adapter.as_deref())?;
        let mut out = m.forward(&[SeqInput {
            adapter,
            tokens: &tokens,
        }])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Greedy continuation of `prompt`: `max_new_tokens` token ids (ties to the lowest id). The
    /// prompt runs once, then one token per step, over a key/value cache.
    pub fn generate(
        &self,
        adapter: Option<String>,
        prompt: Vec<u32>,
        max_new_tokens: u32,
    ) -> Result<Vec<u32>, OpenLedgerError> {
        let m = self.model.read().map_err(poisoned)?;
        let adapter = Self::adapter_id(&m, adapter.as_deref())?;
        Ok(m.greedy(adapter, &prompt, max_new_tokens as usize)?)
    }

    /// [`OnDeviceModel::generate`], handing each token to `listener` as soon as it is chosen;
    /// stops early when the listener returns `false`. Returns the tokens generated.
    pub fn generate_streaming(
        &self,
        adapter: Option<String>,
        prompt: Vec<u32>,
        max_new_tokens: u32,
        listener: Box<dyn TokenListener>,
    ) -> Result<Vec<u32>, OpenLedgerError> {
        let m = self.model.read().map_err(poisoned)?;
        let adapter = Self::adapter_id(&m, adapter.as_deref())?;
        Ok(m.greedy_streaming(
            adapter,
            &prompt,
            max_new_tokens as usize,
            &mut |i, token| listener.on_token(i as u32, token),
        )?)
    }

    /// Token ids of `text` (with the tokenizer's special tokens, e.g. BOS, when
    /// `add_special_tokens`).
    pub fn encode(
        &self,
        text: String,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, OpenLedgerError> {
        self.with_tokenizer(|t| Ok(t.encode(&text, add_special_tokens)?))
    }

    /// Text of `tokens`.
    pub fn decode(
        &self,
        tokens: Vec<u32>,
        skip_special_tokens: bool,
    ) -> Result<String, OpenLedgerError> {
        self.with_tokenizer(|t| Ok(t.decode(&tokens, skip_special_tokens)?))
    }

    /// Greedy continuation of a text prompt: encodes it (special tokens included), generates
    /// `max_new_tokens` tokens and decodes them (special tokens skipped).
    pub fn generate_text(
        &self,
        adapter: Option<String>,
        prompt: String,
        max_new_tokens: u32,
    ) -> Result<String, OpenLedgerError> {
        let ids = self.encode(prompt, true)?;
        let out = self.generate(adapter, ids, max_new_tokens)?;
        self.decode(out, true)
    }

    /// Greedy continuation of a text prompt, streamed: encodes it (special tokens included)
    /// and hands the answer to `listener` piece by piece as tokens are chosen. It ends at the
    /// first of `stop_strings` to appear (the answer is the text before it), after
    /// `max_new_tokens` tokens, or when the listener returns `false` (it is not called again).
    /// While it runs, an end of the text that could still be the beginning of a stop string
    /// waits, so no piece is ever taken back; returns the whole answer, which is the pieces
    /// joined plus, after a listener stopped it, what was still waiting. Each token decodes
    /// only a short window of text. The model and its tokenizer stay locked for reading while
    /// the listener runs: a listener must not attach adapters or set the tokenizer. An empty
    /// stop string is `InvalidArgument`.
    pub fn generate_text_streaming(
        &self,
        adapter: Option<String>,
        prompt: String,
        max_new_tokens: u32,
        stop_strings: Vec<String>,
        listener: Box<dyn TextListener>,
    ) -> Result<String, OpenLedgerError> {
        let ids = self.encode(prompt, true)?;
        let m = self.model.read().map_err(poisoned)?;
        let adapter = Self::adapter_id(&m, adapter.as_deref())?;
        self.with_tokenizer(|tok| {
            Ok(m.greedy_text_streaming(
                tok,
                adapter,
                &ids,
                max_new_tokens as usize,
                &stop_strings,
                &mut |piece| listener.on_text(piece.to_owned()),
            )?)
        })
    }
}
