//! The request bodies of OpenAI's chat and completions endpoints (and vLLM's adapter
//! endpoints), as far as the engine can honour them; a field it cannot honour is refused by
//! name rather than ignored.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// A string or a list of strings (`stop`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage of the whole request.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Sampling fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    /// The model: the base model's name or an adapter's id.
    pub model: String,
    /// At most this many new tokens (deprecated name in chat).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// At most this many new tokens (chat).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Softmax temperature (default 1; 0 is greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k (a vLLM extension; -1 or absent: all).
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Repetition penalty (a vLLM extension).
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// Makes the draw reproducible.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    /// Choices per prompt.
    #[serde(default)]
    pub n: Option<u64>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Accepted when 0 (the engine has no presence penalty).
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Accepted when 0 (the engine has no frequency penalty).
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Accepted when empty.
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Ask for the `openledger` extension object: citations, contributors, fee split, signed
    /// receipt.
    #[serde(default)]
    pub openledger: Option<LedgerAsk>,
    /// Name tokens `token_id:N` in log-probabilities (a vLLM extension).
    #[serde(default)]
    pub return_tokens_as_token_ids: Option<bool>,
    /// An end-user id; recorded nowhere.
    #[serde(default)]
    pub user: Option<String>,
}

/// The `openledger` field: `true`, or options.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LedgerAsk {
    /// `true` asks for the extension, `false` does not.
    Flag(bool),
    /// Asks for it with options.
    Options {
        /// The account that pays the inference (`0x…`; default: the zero address).
        #[serde(default)]
        payer: Option<String>,
    },
}

/// A chat message's content: text, or a list of parts of which only text parts are taken.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Value>),
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Its text.
    #[serde(default)]
    pub content: Option<Content>,
    /// The author's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Shared fields (read from the same object by [`parse_with_sampling`]).
    #[serde(skip)]
    pub sampling: Sampling,
    /// Return log-probabilities of the output tokens.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`, this many alternatives per token (0 to 20).
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    /// Refused when given: the server runs no tools.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// Refused unless `{"type": "text"}`.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Add the assistant's opening to the rendered prompt (default true; a vLLM extension).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
}

/// A completion prompt: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt(s).
    pub prompt: Prompt,
    /// Shared fields (read from the same object by [`parse_with_sampling`]).
    #[serde(skip)]
    pub sampling: Sampling,
    /// This many alternatives per token, with each token's log-probability (0 to 20).
    #[serde(default)]
    pub logprobs: Option<u64>,
    /// Refused when true.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Refused when given.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Accepted when equal to `n`.
    #[serde(default)]
    pub best_of: Option<u64>,
}

/// `POST /v1/load_lora_adapter`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadAdapter {
    /// The id requests will name.
    pub lora_name: String,
    /// The PEFT folder, inside the server's adapters folder (relative to it, or absolute).
    pub lora_path: String,
}

/// `POST /v1/unload_lora_adapter`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnloadAdapter {
    /// The id to remove.
    pub lora_name: String,
}

/// Parses `body` as `T`, naming the field at fault in the error.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::bad_body(format!(
                "the body is not valid JSON for this endpoint: {inner}"
            ))
        } else {
            ApiError::invalid(path.clone(), format!("`{path}`: {inner}"))
        }
    })
}

/// A request that carries the shared [`Sampling`] fields.
pub trait WithSampling: serde::de::DeserializeOwned {
    /// Where they go.
    fn sampling_mut(&mut self) -> &mut Sampling;
}

impl WithSampling for ChatRequest {
    fn sampling_mut(&mut self) -> &mut Sampling {
        &mut self.sampling
    }
}

impl WithSampling for CompletionRequest {
    fn sampling_mut(&mut self) -> &mut Sampling {
        &mut self.sampling
    }
}

/// Parses `body` as `T` and its shared fields (both read from the same JSON object, so an
/// error names the field at fault; serde's `flatten` would lose it).
pub fn parse_with_sampling<T: WithSampling>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = parse(body)?;
    if !value.is_object() {
        return Err(ApiError::bad_body("the body must be a JSON object"));
    }
    let text = value.to_string();
    let sampling: Sampling = parse(text.as_bytes())?;
    let mut req: T = parse(text.as_bytes())?;
    *req.sampling_mut() = sampling;
    Ok(req)
}

impl Message {
    /// The message's text: its content, or its text parts joined by newlines.
    pub fn text(&self, index: usize) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s.clone()),
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    let param = format!("messages[{index}].content[{j}]");
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => texts.push(t.clone()),
                        (Some("text"), _) => {
                            return Err(ApiError::invalid(
                                param,
                                "a text part needs a `text` string",
                            ));
                        }
                        (Some(other), _) => {
                            return Err(ApiError::invalid(
                                param,
                                format!(
                                    "content parts of type {other:?} are not supported: text only"
                                ),
                            ));
                        }
                        (None, _) => {
                            return Err(ApiError::invalid(param, "a content part needs a `type`"));
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
        }
    }
}
