//! The handlers: requests turned into engine requests, engine events into OpenAI responses
//! and server-sent-event chunks.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use openledger_core::error::{Classify, ErrorKind};
use openledger_lora::model::{PendingCancel, ServedError};
use openledger_lora::pool::{AdapterId, Source};
use openledger_lora::serve::{
    Event, FinishReason, MAX_TOP_LOGPROBS, Request, RequestError, SamplingParams, StreamEnd,
    StreamLog, TokenLogprobs,
};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::State;
use crate::api::{self, ChatRequest, CompletionRequest, LedgerAsk, Prompt, Sampling};
use crate::error::ApiError;
use crate::template::ChatMessage;

type Shared = Arc<State>;

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/openledger/info", get(info))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/load_lora_adapter", post(load_adapter))
        .route("/v1/unload_lora_adapter", post(unload_adapter))
        .with_state(state)
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn health(AxState(s): AxState<Shared>) -> Response {
    match s.served.ensure_open() {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

/// The chat page.
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("page.html"),
    )
        .into_response()
}

/// Whether the server attributes, and with what.
async fn info(AxState(s): AxState<Shared>) -> Response {
    let attribution = s.attributor.as_ref().map(|a| a.info());
    axum::Json(json!({
        "model": s.base_name,
        "max_context": s.served.max_context(),
        "keys": s.keys.is_some(),
        "attribution": attribution,
    }))
    .into_response()
}

/// How long a scrape waits for the engine to answer between two steps.
const ENGINE_STATS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn metrics(AxState(s): AxState<Shared>) -> Response {
    // The engine answers between steps; a scrape never waits long for a busy or stopped one
    // (and leaves no thread waiting after it).
    let engine = Arc::clone(&s);
    let served = tokio::task::spawn_blocking(move || engine.served.stats_within(ENGINE_STATS_WAIT))
        .await
        .ok()
        .and_then(Result::ok);
    let text = match &s.pool {
        Some(pool) => {
            let stats = pool.stats();
            let resident: Vec<String> = pool.resident_ids().iter().map(|i| i.to_string()).collect();
            s.metrics.render(Some((&stats, &resident)), served.as_ref())
        }
        None => s.metrics.render(None, served.as_ref()),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Checks the key (when the server has a key file); `admin`: the call needs an admin key.
fn admit(s: &State, headers: &HeaderMap, admin: bool) -> Result<(), ApiError> {
    let Some(keys) = &s.keys else {
        return Ok(());
    };
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let info = keys.admit(auth)?;
    if admin && !info.admin {
        return Err(ApiError::forbidden(format!(
            "the key {} may not load or unload adapters",
            info.name
        )));
    }
    Ok(())
}

async fn read_body(
    s: &State,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = s.max_body_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

async fn models(AxState(s): AxState<Shared>, headers: HeaderMap) -> Response {
    respond((|| {
        admit(&s, &headers, false)?;
        let card = |id: &str, parent: Option<&str>| {
            json!({"id": id, "object": "model", "created": s.created, "owned_by": "openledger",
                   "root": id, "parent": parent, "max_model_len": s.served.max_context()})
        };
        let mut data = vec![card(&s.base_name, None)];
        data.extend(
            s.adapters
                .lock()
                .iter()
                .map(|a| card(a, Some(&s.base_name))),
        );
        Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
    })())
}

/// The adapter a `model` field names (`None`: the base), or 404. An ensemble of loaded
/// adapters is named by its spelling (`a+b`, `a*0.7+b*0.3`: [`AdapterId::parse`]); a member not
/// loaded is the model not found.
fn resolve_model(s: &State, model: &str) -> Result<Option<AdapterId>, ApiError> {
    if model == s.base_name {
        return Ok(None);
    }
    let Ok(id) = AdapterId::parse(model) else {
        return Err(ApiError::model_not_found(model));
    };
    let loaded = s.adapters.lock();
    match id
        .adapters()
        .into_iter()
        .find(|a| !loaded.contains(a.as_str()))
    {
        None => Ok(Some(id)),
        Some(missing) => Err(ApiError::model_not_found(missing.as_str())),
    }
}

/// What one request runs: its prompts, `n` choices each, how they sample.
struct Plan {
    model: String,
    adapter: Option<AdapterId>,
    prompts: Vec<Vec<u32>>,
    n: usize,
    sampling: SamplingParams,
    seeded: bool,
    stream: bool,
    include_usage: bool,
    chat: bool,
    /// Name tokens `token_id:N` in log-probabilities (vLLM's `return_tokens_as_token_ids`).
    token_ids: bool,
    /// The `openledger` extension, when asked for.
    ledger: Option<Ledger>,
}

/// What the `openledger` extension of a call is computed from.
struct Ledger {
    /// The text retrieval runs on (the last user message, or the prompt).
    question: String,
    /// The payer named (default: the zero address, or the embedded chain's funded payer).
    payer: Option<openledger_core::Address>,
}

/// The extension a request asks for (`None`: it asks for none); refused when the server does
/// not attribute.
fn ledger(s: &State, f: &Sampling, question: String) -> Result<Option<Ledger>, ApiError> {
    let payer = match &f.openledger {
        None | Some(LedgerAsk::Flag(false)) => return Ok(None),
        Some(LedgerAsk::Flag(true)) => None,
        Some(LedgerAsk::Options { payer }) => payer.clone(),
    };
    if s.attributor.is_none() {
        return Err(ApiError::invalid(
            "openledger",
            "the server was started without a datanet (--datanet): it does not attribute",
        ));
    }
    let payer = payer
        .map(|p| {
            p.parse().map_err(|_| {
                ApiError::invalid(
                    "openledger.payer",
                    format!("{p:?} is not a 0x-prefixed address"),
                )
            })
        })
        .transpose()?;
    Ok(Some(Ledger { question, payer }))
}

impl Plan {
    fn new(
        f: &Sampling,
        adapter: Option<AdapterId>,
        prompts: Vec<Vec<u32>>,
        n: usize,
        sampling: SamplingParams,
        seeded: bool,
        chat: bool,
    ) -> Self {
        Self {
            model: f.model.clone(),
            adapter,
            prompts,
            n,
            sampling,
            seeded,
            stream: f.stream.unwrap_or(false),
            include_usage: f
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            chat,
            token_ids: f.return_tokens_as_token_ids.unwrap_or(false),
            ledger: None,
        }
    }
}

/// The sampling a request asks for, checked; `prompt_len` is its longest prompt.
fn sampling(
    s: &State,
    f: &Sampling,
    max_tokens: Option<u64>,
    logprobs: Option<usize>,
    prompt_len: usize,
) -> Result<(SamplingParams, bool), ApiError> {
    let ctx = s.served.max_context();
    if prompt_len >= ctx {
        return Err(ApiError::context_length(
            "messages",
            format!(
                "This model's maximum context length is {ctx} tokens. However, your prompt has \
                 {prompt_len} tokens, which leaves no room for output."
            ),
        ));
    }
    let room = ctx - prompt_len;
    let max_new_tokens = match max_tokens {
        None => room,
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        Some(m) if m as usize > room => {
            return Err(ApiError::context_length(
                "max_tokens",
                format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested \
                     {} tokens ({prompt_len} in the prompt, {m} for the completion).",
                    prompt_len as u64 + m
                ),
            ));
        }
        Some(m) => m as usize,
    };
    for (name, v) in [
        ("presence_penalty", f.presence_penalty),
        ("frequency_penalty", f.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid(
                name,
                format!("{name} is not supported; use repetition_penalty"),
            ));
        }
    }
    if f.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid(
            "logit_bias",
            "logit_bias is not supported",
        ));
    }
    let temperature = f.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, not {temperature}"),
        ));
    }
    let top_p = match f.top_p {
        None => None,
        Some(p) if p > 0.0 && p <= 1.0 => (p < 1.0).then_some(p),
        Some(p) => {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], not {p}"),
            ));
        }
    };
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 or ≥ 1, not {k}"),
            ));
        }
    };
    if let Some(r) = f.repetition_penalty
        && !(r > 0.0 && r.is_finite())
    {
        return Err(ApiError::invalid(
            "repetition_penalty",
            format!("repetition_penalty must be > 0, not {r}"),
        ));
    }
    let stop_strings = f
        .stop
        .clone()
        .map(api::OneOrMany::into_vec)
        .unwrap_or_default();
    if stop_strings.len() > 16 {
        return Err(ApiError::invalid("stop", "at most 16 stop sequences"));
    }
    if stop_strings.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "a stop sequence must not be empty",
        ));
    }
    let seeded = f.seed.is_some();
    let seed = f.seed.map_or_else(rand::random::<u64>, |x| x as u64);
    Ok((
        SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty: f.repetition_penalty,
            seed,
            max_new_tokens,
            stop_tokens: s.eos.clone(),
            stop_strings,
            logprobs,
        },
        seeded,
    ))
}

fn choices_n(s: &State, f: &Sampling, prompts: usize) -> Result<usize, ApiError> {
    let n = f.n.unwrap_or(1);
    if n == 0 || (n as usize).saturating_mul(prompts) > s.max_choices {
        return Err(ApiError::invalid(
            "n",
            format!(
                "n must be between 1 and {} (choices over all prompts)",
                s.max_choices
            ),
        ));
    }
    Ok(n as usize)
}

fn encode(s: &State, text: &str, special: bool, param: &str) -> Result<Vec<u32>, ApiError> {
    s.tokenizer
        .encode(text, special)
        .map_err(|e| ApiError::invalid(param, format!("the text cannot be tokenized: {e}")))
}

async fn chat(AxState(s): AxState<Shared>, headers: HeaderMap, body: Body) -> Response {
    respond(chat_inner(s, headers, body).await)
}

async fn chat_inner(s: Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    admit(&s, &headers, false)?;
    let bytes = read_body(&s, &headers, body).await?;
    let req: ChatRequest = api::parse_with_sampling(&bytes)?;
    let adapter = resolve_model(&s, &req.sampling.model)?;
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools", "tools are not supported"));
    }
    if let Some(f) = &req.response_format
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(ApiError::invalid(
            "response_format",
            "only {\"type\": \"text\"} is supported",
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let template = s.template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "messages",
            format!(
                "the model {} has no chat template (tokenizer_config.json's chat_template or \
                 chat_template.jinja): use /v1/completions",
                s.base_name
            ),
        )
    })?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        messages.push(ChatMessage {
            role: m.role.clone(),
            content: m.text(i)?,
            name: m.name.clone(),
        });
    }
    let text = template
        .render(&messages, req.add_generation_prompt.unwrap_or(true))
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    // The template writes the special tokens it wants (BOS included), as transformers'
    // apply_chat_template(tokenize=True) encodes.
    let prompt = encode(&s, &text, false, "messages")?;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "the rendered prompt has no token",
        ));
    }
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        (true, None) => Some(0),
        (true, Some(k)) if k as usize <= MAX_TOP_LOGPROBS => Some(k as usize),
        (true, Some(k)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs must be between 0 and 20, not {k}"),
            ));
        }
    };
    let max_tokens = req
        .sampling
        .max_completion_tokens
        .or(req.sampling.max_tokens);
    let (params, seeded) = sampling(&s, &req.sampling, max_tokens, logprobs, prompt.len())?;
    let n = choices_n(&s, &req.sampling, 1)?;
    let question = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone())
        .unwrap_or_default();
    let mut plan = Plan::new(
        &req.sampling,
        adapter,
        vec![prompt],
        n,
        params,
        seeded,
        true,
    );
    plan.ledger = ledger(&s, &req.sampling, question)?;
    run(s, plan).await
}

async fn completions(AxState(s): AxState<Shared>, headers: HeaderMap, body: Body) -> Response {
    respond(completions_inner(s, headers, body).await)
}

async fn completions_inner(
    s: Shared,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admit(&s, &headers, false)?;
    let bytes = read_body(&s, &headers, body).await?;
    let req: CompletionRequest = api::parse_with_sampling(&bytes)?;
    let adapter = resolve_model(&s, &req.sampling.model)?;
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    if req.suffix.as_ref().is_some_and(|x| !x.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    if let Some(b) = req.best_of
        && b != req.sampling.n.unwrap_or(1)
    {
        return Err(ApiError::invalid("best_of", "best_of must equal n"));
    }
    let vocab = s.served.vocab_size();
    let check_ids = |ids: Vec<u32>, param: String| -> Result<Vec<u32>, ApiError> {
        if let Some(t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid(
                param,
                format!("token {t} is outside the vocabulary of {vocab}"),
            ));
        }
        Ok(ids)
    };
    let text = match &req.prompt {
        Prompt::Text(t) => Some(t.clone()),
        Prompt::Texts(ts) => ts.first().cloned(),
        _ => None,
    };
    let prompts: Vec<Vec<u32>> = match req.prompt {
        Prompt::Text(t) => vec![encode(&s, &t, true, "prompt")?],
        Prompt::Texts(ts) => ts
            .iter()
            .enumerate()
            .map(|(i, t)| encode(&s, t, true, &format!("prompt[{i}]")))
            .collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![check_ids(ids, "prompt".into())?],
        Prompt::TokenLists(lists) => lists
            .into_iter()
            .enumerate()
            .map(|(i, ids)| check_ids(ids, format!("prompt[{i}]")))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "no prompt given"));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ApiError::invalid(
            format!("prompt[{i}]"),
            "the prompt has no token",
        ));
    }
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if k as usize <= MAX_TOP_LOGPROBS => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("logprobs must be between 0 and 20, not {k}"),
            ));
        }
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let (params, seeded) = sampling(
        &s,
        &req.sampling,
        Some(req.sampling.max_tokens.unwrap_or(16)),
        logprobs,
        longest,
    )?;
    let n = choices_n(&s, &req.sampling, prompts.len())?;
    let question = match text {
        Some(t) => t,
        None => s.tokenizer.decode(&prompts[0], true).unwrap_or_default(),
    };
    let mut plan = Plan::new(&req.sampling, adapter, prompts, n, params, seeded, false);
    plan.ledger = ledger(&s, &req.sampling, question)?;
    run(s, plan).await
}

/// The engine requests of a call, cancelled when dropped (the client went away, or the
/// response is done).
struct Running {
    rx: UnboundedReceiver<(usize, Event)>,
    cancels: Vec<PendingCancel>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &self.cancels {
            c.cancel();
        }
    }
}

/// One choice as read so far.
struct Choice {
    log: StreamLog,
    logprobs: Vec<(u32, TokenLogprobs)>,
    /// Log-probabilities already streamed.
    logprobs_sent: usize,
}

impl Choice {
    fn ended(&self) -> bool {
        self.log.end().is_some()
    }
}

fn served_error(e: ServedError) -> ApiError {
    match e {
        ServedError::Request(r) => request_error(&r),
        other => ApiError::unavailable(other.to_string()),
    }
}

fn request_error(e: &RequestError) -> ApiError {
    match e {
        RequestError::PromptTooLong { .. } => ApiError::context_length("messages", e.to_string()),
        RequestError::UnknownAdapter { adapter } => ApiError::model_not_found(adapter.as_str()),
        RequestError::AdapterFailed { .. } | RequestError::AdapterRejected { .. } => {
            ApiError::invalid("model", e.to_string())
        }
        _ => match e.kind() {
            ErrorKind::InvalidArgument => ApiError::bad_body(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        },
    }
}

/// Submits every choice of `plan` and answers with a JSON body or a stream.
async fn run(s: Shared, plan: Plan) -> Result<Response, ApiError> {
    let (tx, rx) = unbounded_channel();
    let mut running = Running {
        rx,
        cancels: Vec::new(),
    };
    let mut choices = Vec::with_capacity(plan.prompts.len() * plan.n);
    for prompt in &plan.prompts {
        s.metrics.request(&plan.model, prompt.len());
        for i in 0..plan.n {
            let index = choices.len();
            let mut sampling = plan.sampling.clone();
            // Choice i of a seeded request draws from seed + i: the same request gives the same
            // choices, and the choices differ from one another.
            sampling.seed = if plan.seeded {
                sampling.seed.wrapping_add(i as u64)
            } else {
                rand::random()
            };
            let tx = tx.clone();
            let metrics = Arc::clone(&s.metrics);
            let model = plan.model.clone();
            let cancel = s
                .served
                .submit_with_callback(
                    Request {
                        prompt: prompt.clone(),
                        adapter: plan.adapter.clone(),
                        sampling,
                    },
                    move |e: &Event| {
                        // Counted here, on the engine thread, so that a request whose client
                        // went away is counted too.
                        match e {
                            Event::Finished { reason, stats } => metrics.finished(
                                &model,
                                stats,
                                false,
                                *reason == FinishReason::Cancelled,
                            ),
                            Event::Failed { stats, .. } => {
                                metrics.finished(&model, stats, true, false)
                            }
                            Event::Token { .. } => {}
                        }
                        let _ = tx.send((index, e.clone()));
                    },
                )
                .map_err(served_error)?;
            running.cancels.push(cancel);
            choices.push(Choice {
                log: StreamLog::new(&plan.sampling.stop_strings),
                logprobs: Vec::new(),
                logprobs_sent: 0,
            });
        }
    }
    drop(tx);
    let id = format!(
        "{}-{:016x}{:08x}",
        if plan.chat { "chatcmpl" } else { "cmpl" },
        rand::random::<u64>(),
        s.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let job = Job {
        s,
        plan,
        id,
        running,
        choices,
        queue: VecDeque::new(),
        started: false,
        finished: false,
    };
    if job.plan.stream {
        let stream = futures_util::stream::unfold(job, |mut job| async move {
            let data = job.next_chunk().await?;
            Some((Ok::<_, Infallible>(SseEvent::default().data(data)), job))
        });
        Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response())
    } else {
        let body = job.collect().await?;
        Ok(axum::Json(body).into_response())
    }
}

/// One call in flight.
struct Job {
    s: Shared,
    plan: Plan,
    id: String,
    running: Running,
    choices: Vec<Choice>,
    /// Chunks ready to send.
    queue: VecDeque<String>,
    started: bool,
    finished: bool,
}

fn finish_reason(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::MaxNewTokens | FinishReason::MaxContext => "length",
        FinishReason::StopToken(_) | FinishReason::StopString(_) => "stop",
        FinishReason::Cancelled => "abort",
        _ => "stop",
    }
}

impl Job {
    fn decode(&self) -> impl FnMut(&[u32]) -> Result<String, ApiError> + '_ {
        |ids: &[u32]| {
            self.s
                .tokenizer
                .decode(ids, true)
                .map_err(|e| ApiError::internal(e.to_string()))
        }
    }

    /// Takes one engine event; `false` when the engine stopped before every choice ended.
    async fn pump(&mut self) -> Result<Option<usize>, ApiError> {
        let Some((index, event)) = self.running.rx.recv().await else {
            // Every sender is gone: each choice ended, or the engine stopped.
            if self.choices.iter().all(Choice::ended) {
                return Ok(None);
            }
            let reason = self
                .s
                .served
                .fault()
                .unwrap_or_else(|| "the engine stopped".into());
            return Err(ApiError::unavailable(reason));
        };
        let c = &mut self.choices[index];
        if let Event::Token {
            token,
            logprobs: Some(lp),
            ..
        } = &event
        {
            c.logprobs.push((*token, lp.clone()));
        }
        c.log.record(Some(event));
        if let Some(StreamEnd::Failed(e, _)) = c.log.end() {
            return Err(request_error(e));
        }
        Ok(Some(index))
    }

    /// Waits for every choice and writes the response body.
    async fn collect(mut self) -> Result<Value, ApiError> {
        while !self.choices.iter().all(Choice::ended) {
            if self.pump().await?.is_none() {
                break;
            }
        }
        let mut out = Vec::with_capacity(self.choices.len());
        for i in 0..self.choices.len() {
            let text = {
                let mut log = std::mem::take(&mut self.choices[i].log);
                let r = log.text(self.decode());
                self.choices[i].log = log;
                r?
            };
            let c = &self.choices[i];
            let reason = c.log.finish_reason().map(finish_reason);
            let lp = self.logprobs_json(&c.logprobs, 0);
            out.push(if self.plan.chat {
                json!({"index": i, "message": {"role": "assistant", "content": text},
                       "logprobs": lp, "finish_reason": reason})
            } else {
                json!({"index": i, "text": text, "logprobs": lp, "finish_reason": reason})
            });
        }
        let mut body = json!({
            "id": self.id,
            "object": if self.plan.chat { "chat.completion" } else { "text_completion" },
            "created": self.s.created_now(),
            "model": self.plan.model,
            "choices": out,
            "usage": self.usage(),
        });
        if let Some(ext) = self.ledger_json()? {
            body["openledger"] = ext;
        }
        Ok(body)
    }

    /// The `openledger` extension of this call, when asked for.
    fn ledger_json(&self) -> Result<Option<Value>, ApiError> {
        let (Some(l), Some(a)) = (&self.plan.ledger, &self.s.attributor) else {
            return Ok(None);
        };
        a.attribute(
            &l.question,
            &self.id,
            &self.s.base_name,
            self.plan.adapter.as_ref(),
            l.payer,
        )
        .map(Some)
    }

    fn usage(&self) -> Value {
        let prompt: usize = self.plan.prompts.iter().map(Vec::len).sum();
        let completion: usize = self.choices.iter().map(|c| c.log.tokens().len()).sum();
        json!({"prompt_tokens": prompt, "completion_tokens": completion,
               "total_tokens": prompt + completion})
    }

    fn token_text(&self, t: u32) -> String {
        if self.plan.token_ids {
            return format!("token_id:{t}");
        }
        self.s.tokenizer.decode(&[t], false).unwrap_or_default()
    }

    /// Log-probabilities of `lps[from..]` in the endpoint's format (`null` when not asked).
    fn logprobs_json(&self, lps: &[(u32, TokenLogprobs)], from: usize) -> Value {
        if self.plan.sampling.logprobs.is_none() {
            return Value::Null;
        }
        let lps = &lps[from.min(lps.len())..];
        let num = |x: f32| {
            if x.is_finite() {
                json!(x)
            } else {
                json!(-9999.0)
            }
        };
        if self.plan.chat {
            let entry = |t: u32, lp: f32| {
                let text = self.token_text(t);
                json!({"token": text, "logprob": num(lp), "bytes": text.as_bytes()})
            };
            let content: Vec<Value> = lps
                .iter()
                .map(|(t, lp)| {
                    let mut e = entry(*t, lp.logprob);
                    e["top_logprobs"] = lp.top.iter().map(|&(a, l)| entry(a, l)).collect();
                    e
                })
                .collect();
            json!({"content": content, "refusal": null})
        } else {
            let tokens: Vec<String> = lps.iter().map(|(t, _)| self.token_text(*t)).collect();
            let mut offset = 0usize;
            let offsets: Vec<usize> = tokens
                .iter()
                .map(|t| {
                    let o = offset;
                    offset += t.len();
                    o
                })
                .collect();
            json!({
                "tokens": tokens,
                "token_logprobs": lps.iter().map(|(_, lp)| num(lp.logprob)).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|(_, lp)| {
                    lp.top.iter().map(|&(a, l)| (self.token_text(a), num(l)))
                        .collect::<serde_json::Map<String, Value>>()
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }

    fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": if self.plan.chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.s.created_now(),
            "model": self.plan.model,
            "choices": choices,
        });
        if self.plan.include_usage {
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        c.to_string()
    }

    /// The chunk for what choice `i` has that was not sent yet (`None`: nothing new).
    fn delta(&mut self, i: usize) -> Result<Option<String>, ApiError> {
        let piece = {
            let mut log = std::mem::take(&mut self.choices[i].log);
            let r = log.new_text(self.decode()).map(str::to_owned);
            self.choices[i].log = log;
            r?
        };
        let c = &self.choices[i];
        let reason = c.log.finish_reason().map(finish_reason);
        let fresh = c.logprobs.len() > c.logprobs_sent;
        if piece.is_empty() && reason.is_none() && !fresh {
            return Ok(None);
        }
        let lp = self.logprobs_json(&c.logprobs, c.logprobs_sent);
        let choice = if self.plan.chat {
            json!({"index": i, "delta": if piece.is_empty() && reason.is_some() { json!({}) }
                   else { json!({"content": piece}) },
                   "logprobs": lp, "finish_reason": reason})
        } else {
            json!({"index": i, "text": piece, "logprobs": lp, "finish_reason": reason})
        };
        let sent = c.logprobs.len();
        self.choices[i].logprobs_sent = sent;
        Ok(Some(self.chunk(vec![choice], None)))
    }

    /// The next server-sent event's data; `None` after `[DONE]`.
    async fn next_chunk(&mut self) -> Option<String> {
        loop {
            if let Some(c) = self.queue.pop_front() {
                return Some(c);
            }
            if self.finished {
                return None;
            }
            if !self.started {
                self.started = true;
                if self.plan.chat {
                    for i in 0..self.choices.len() {
                        let role = json!({"index": i, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": null, "finish_reason": null});
                        let c = self.chunk(vec![role], None);
                        self.queue.push_back(c);
                    }
                }
                continue;
            }
            match self.pump().await {
                Ok(Some(i)) => match self.delta(i) {
                    Ok(Some(c)) => self.queue.push_back(c),
                    Ok(None) => {}
                    Err(e) => self.fail(e),
                },
                Ok(None) => {
                    let ext = match self.ledger_json() {
                        Ok(e) => e,
                        Err(e) => {
                            self.fail(e);
                            continue;
                        }
                    };
                    // The last chunk has no choice: the usage, and the extension when asked.
                    if self.plan.include_usage || ext.is_some() {
                        let mut c = json!({
                            "id": self.id,
                            "object": if self.plan.chat { "chat.completion.chunk" } else { "text_completion" },
                            "created": self.s.created_now(),
                            "model": self.plan.model,
                            "choices": [],
                        });
                        if self.plan.include_usage {
                            c["usage"] = self.usage();
                        }
                        if let Some(e) = ext {
                            c["openledger"] = e;
                        }
                        self.queue.push_back(c.to_string());
                    }
                    self.queue.push_back("[DONE]".into());
                    self.finished = true;
                }
                Err(e) => self.fail(e),
            }
        }
    }

    /// Ends the stream with an error event.
    fn fail(&mut self, e: ApiError) {
        self.queue.push_back(e.body().to_string());
        self.queue.push_back("[DONE]".into());
        self.finished = true;
    }
}

impl State {
    fn created_now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(self.created, |d| d.as_secs())
    }
}

async fn load_adapter(AxState(s): AxState<Shared>, headers: HeaderMap, body: Body) -> Response {
    respond(load_inner(s, headers, body).await)
}

async fn load_inner(s: Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    admit(&s, &headers, true)?;
    let bytes = read_body(&s, &headers, body).await?;
    let req: api::LoadAdapter = api::parse(&bytes)?;
    let Some(pool) = &s.pool else {
        return Err(ApiError::invalid(
            "lora_path",
            "the server was started without an adapters folder or a hub",
        ));
    };
    let id = AdapterId::new(&req.lora_name)
        .map_err(|e| ApiError::invalid("lora_name", e.to_string()))?;
    if req.lora_name == s.base_name || s.adapters.lock().contains(&req.lora_name) {
        return Err(ApiError::invalid(
            "lora_name",
            format!("the adapter '{}' has already been loaded", req.lora_name),
        ));
    }
    let source = if let Some(spec) = req.lora_path.strip_prefix("hub:") {
        let Some(client) = &s.hub else {
            return Err(ApiError::invalid(
                "lora_path",
                "the server was started without a hub",
            ));
        };
        let a = crate::hub::HubAdapter::parse(Arc::clone(client), spec)
            .map_err(|e| ApiError::invalid("lora_path", e.to_string()))?;
        Source::Custom(Arc::new(a))
    } else {
        let Some(root) = &s.adapters_root else {
            return Err(ApiError::invalid(
                "lora_path",
                "the server was started without an adapters folder: use hub:REPO[@REVISION]",
            ));
        };
        let given = std::path::Path::new(&req.lora_path);
        let path = if given.is_absolute() {
            given.to_path_buf()
        } else {
            root.root().join(given)
        };
        let canon = path
            .canonicalize()
            .map_err(|e| ApiError::invalid("lora_path", format!("{}: {e}", req.lora_path)))?;
        if !canon.starts_with(root.root()) || !canon.is_dir() {
            return Err(ApiError::invalid(
                "lora_path",
                format!(
                    "{} is not a folder inside the adapters folder",
                    req.lora_path
                ),
            ));
        }
        Source::Dir(canon)
    };
    pool.register(id.clone(), source)
        .map_err(|e| ApiError::invalid("lora_name", e.to_string()))?;
    // Load it now, so a broken adapter is refused here rather than at its first request.
    let p = pool.clone();
    let check = id.clone();
    let loaded = tokio::task::spawn_blocking(move || p.prefetch(&check).and_then(|f| f.wait()))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if let Err(e) = loaded {
        let _ = pool.unregister(&id);
        return Err(ApiError::invalid("lora_path", e.to_string()));
    }
    s.adapters.lock().insert(req.lora_name.clone());
    Ok((
        StatusCode::OK,
        format!(
            "Success: LoRA adapter '{}' added successfully.",
            req.lora_name
        ),
    )
        .into_response())
}

async fn unload_adapter(AxState(s): AxState<Shared>, headers: HeaderMap, body: Body) -> Response {
    respond(unload_inner(s, headers, body).await)
}

async fn unload_inner(s: Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    admit(&s, &headers, true)?;
    let bytes = read_body(&s, &headers, body).await?;
    let req: api::UnloadAdapter = api::parse(&bytes)?;
    if !s.adapters.lock().contains(&req.lora_name) {
        return Err(ApiError::model_not_found(&req.lora_name));
    }
    let id = AdapterId::new(&req.lora_name)
        .map_err(|e| ApiError::invalid("lora_name", e.to_string()))?;
    if let Some(pool) = &s.pool {
        pool.unregister(&id)
            .map_err(|e| ApiError::invalid("lora_name", e.to_string()))?;
    }
    s.adapters.lock().remove(&req.lora_name);
    Ok((
        StatusCode::OK,
        format!(
            "Success: LoRA adapter '{}' removed successfully.",
            req.lora_name
        ),
    )
        .into_response())
}
