//! Chat templates: the model folder's Jinja template (`chat_template.jinja`, or
//! `tokenizer_config.json`'s `chat_template`), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it with Jinja2: `trim_blocks` and `lstrip_blocks` on, Python's
//! string, dict and list methods (`.strip()`, `.items()` …), `raise_exception(message)`,
//! `strftime_now(format)` and a `tojson` that writes what Python's `json.dumps` writes. The
//! template sees `messages`, `add_generation_prompt` and the special tokens (`bos_token`,
//! `eos_token`, `unk_token`, `pad_token`) that `tokenizer_config.json` names.
//!
//! ```
//! use openledger_lora::model::{ChatMessage, ChatTemplate};
//!
//! let source = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}\
//!               {% if add_generation_prompt %}<|assistant|>{% endif %}";
//! let t = ChatTemplate::new(source, Default::default()).unwrap();
//! let text = t.render(&[ChatMessage::new("user", " Hi ")], true).unwrap();
//! assert_eq!(text, "<|user|>Hi\n<|assistant|>");
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};

/// The template file transformers writes beside the tokenizer (newer versions).
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// The tokenizer configuration that holds the template (older versions) and special tokens.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Instructions one rendering may run (minijinja's fuel): bounds a hostile template or
/// conversation.
const FUEL: u64 = 5_000_000;

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file of the model folder could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The template does not compile.
    #[error("the chat template does not compile: {0}")]
    Syntax(String),
    /// The template refused the conversation (`raise_exception`), or failed on it.
    #[error("the chat template refused the messages: {0}")]
    Render(String),
}

/// A compiled chat template and the special tokens it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    tokens: BTreeMap<String, String>,
}

impl ChatTemplate {
    /// Compiles `source`; `special_tokens` maps names such as `bos_token` to their text.
    pub fn new(
        source: &str,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(Self {
            env,
            tokens: special_tokens,
        })
    }

    /// The template a GGUF file carries (`tokenizer.chat_template`), with the special tokens its
    /// metadata names. `None` when the file has no template.
    pub fn from_gguf(file: &super::GgufFile) -> Result<Option<Self>, TemplateError> {
        let tokens: BTreeMap<String, String> = [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ]
        .into_iter()
        .filter_map(|(name, key)| file.special_token(key).map(|t| (name.to_owned(), t)))
        .collect();
        file.chat_template()
            .map(|src| Self::new(src, tokens))
            .transpose()
    }

    /// The model folder's template: `chat_template.jinja` when present, else the
    /// `chat_template` of `tokenizer_config.json` (a string, or a list of named templates of
    /// which `default` is taken). `None` when the folder has neither.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>, TemplateError> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config: Option<serde_json::Value> = match std::fs::read(&config_path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes).map_err(|e| TemplateError::File {
                    path: config_path.clone(),
                    reason: e.to_string(),
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(TemplateError::File {
                    path: config_path,
                    reason: e.to_string(),
                });
            }
        };
        let mut tokens = BTreeMap::new();
        if let Some(c) = &config {
            for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
                // A token is its text, or an AddedToken object holding it in `content`.
                let text = match c.get(name) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Object(o)) => o
                        .get("content")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned),
                    _ => None,
                };
                if let Some(t) = text {
                    tokens.insert(name.to_owned(), t);
                }
            }
        }
        let file = dir.join(TEMPLATE_FILE);
        let source = match std::fs::read_to_string(&file) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(TemplateError::File {
                    path: file,
                    reason: e.to_string(),
                });
            }
        };
        let source = match source {
            Some(s) => s,
            None => match config.as_ref().and_then(|c| c.get("chat_template")) {
                None | Some(serde_json::Value::Null) => return Ok(None),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                    .map(str::to_owned)
                    .ok_or_else(|| TemplateError::File {
                        path: config_path.clone(),
                        reason: "chat_template lists no template named \"default\"".into(),
                    })?,
                Some(_) => {
                    return Err(TemplateError::File {
                        path: config_path,
                        reason: "chat_template is neither a string nor a list of named templates"
                            .into(),
                    });
                }
            },
        };
        Self::new(&source, tokens).map(Some)
    }

    /// Renders `messages`, ending with the assistant's opening when `add_generation_prompt`.
    /// Each message is a dict of `role`, `content` and (when it has one) `name`, in that order,
    /// as the messages of a Python caller would be.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        let mut ctx: BTreeMap<&str, Value> = self
            .tokens
            .iter()
            .map(|(k, v)| (k.as_str(), Value::from(v.as_str())))
            .collect();
        let list: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut pairs = vec![
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ];
                if let Some(n) = &m.name {
                    pairs.push(("name", Value::from(n.as_str())));
                }
                Value::from_pairs(pairs)
            })
            .collect();
        ctx.insert("messages", Value::from(list));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        template
            .render(ctx)
            .map_err(|e| TemplateError::Render(describe(&e)))
    }
}

/// The ids that end a turn, as `generation_config.json` (else `config.json`) gives
/// `eos_token_id`: one id or a list of them; empty when neither file names one.
pub fn eos_token_ids(dir: &Path) -> Result<Vec<u32>, TemplateError> {
    for file in ["generation_config.json", "config.json"] {
        let path = dir.join(file);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(TemplateError::File {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| TemplateError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let id = |x: &serde_json::Value| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| TemplateError::File {
                    path: path.clone(),
                    reason: "eos_token_id must be a token id or a list of them".into(),
                })
        };
        match v.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::Array(a)) => return a.iter().map(id).collect(),
            Some(x) => return Ok(vec![id(x)?]),
        }
    }
    Ok(Vec::new())
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` …
    pub role: String,
    /// Its text.
    pub content: String,
    /// Its author's name, when given.
    #[serde(default)]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }
}

/// An error's message with its causes (minijinja puts the template's line in the chain).
fn describe(e: &Error) -> String {
    match e.kind() {
        ErrorKind::InvalidOperation if e.detail().is_some() && e.name().is_none() => {
            e.detail().unwrap_or_default().to_owned()
        }
        _ => {
            let mut s = e
                .detail()
                .map_or_else(|| e.kind().to_string(), str::to_owned);
            if let Some(line) = e.line() {
                let _ = write!(s, " (line {line})");
            }
            s
        }
    }
}

/// `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time, formatted as Python's `strftime` would for
/// `%Y %y %m %d %e %B %b %A %a %H %M %S %j %%` (other directives are kept as written).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&format, secs)
}

/// `format` at `secs` past the Unix epoch (UTC), see [`strftime_now`].
pub(crate) fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:2}"),
            Some('B') => write!(out, "{}", MONTHS[(month - 1) as usize]),
            Some('b') => write!(out, "{}", &MONTHS[(month - 1) as usize][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('H') => write!(out, "{:02}", tod / 3600),
            Some('M') => write!(out, "{:02}", tod / 60 % 60),
            Some('S') => write!(out, "{:02}", tod % 60),
            Some('j') => write!(out, "{yday:03}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// `tojson(indent=None, ensure_ascii=False, separators=None, sort_keys=False)`, as
/// transformers defines it over Python's `json.dumps` (no HTML escaping).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([i, k]) => (i.clone(), k.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "separators must be a pair of strings",
            ));
        }
        // Python's default item separator drops its space when indenting.
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = PyJson {
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
        item,
        key,
    };
    let mut out = String::new();
    style.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// How Python's `json.dumps` lays out a value.
struct PyJson {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
    item: String,
    key: String,
}

impl PyJson {
    fn write(&self, v: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        use minijinja::value::ValueKind as K;
        if depth > 128 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: nested too deep",
            ));
        }
        match v.kind() {
            K::Undefined | K::None => out.push_str("null"),
            K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            K::Number => {
                if v.is_integer() {
                    let _ = write!(out, "{v}");
                } else {
                    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                        // Python writes a float with a fractional part ("1.0").
                        let _ = write!(out, "{f:.1}");
                    } else if f.is_nan() {
                        out.push_str("NaN");
                    } else if f.is_infinite() {
                        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                    } else {
                        let _ = write!(out, "{f:?}");
                    }
                }
            }
            K::String | K::Plain => self.string(&v.to_string(), out),
            K::Seq | K::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(depth + 1, out);
                    self.write(item, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push(']');
            }
            K::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort_by_key(|a| a.to_string());
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(depth + 1, out);
                    self.string(&k.to_string(), out);
                    out.push_str(&self.key);
                    self.write(&v.get_item(k)?, depth + 1, out)?;
                }
                self.newline(depth, out);
                out.push('}');
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a {other} cannot be written as JSON"),
                ));
            }
        }
        Ok(())
    }

    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_knows_dates_past_and_leap_days() {
        // 2024-02-29T13:05:09Z, a Thursday, day 60 of a leap year.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %j %a %A %b %B %y %e %% %Q", t),
            "2024-02-29 13:05:09 060 Thu Thursday Feb February 24 29 % %Q"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime("%d %b %Y", -86_400), "31 Dec 1969");
    }

    #[test]
    fn eos_ids_come_from_the_generation_config_first() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, v: &str| std::fs::write(dir.path().join(f), v).unwrap();
        assert_eq!(eos_token_ids(dir.path()).unwrap(), Vec::<u32>::new());
        write("config.json", r#"{"eos_token_id": 2}"#);
        assert_eq!(eos_token_ids(dir.path()).unwrap(), vec![2]);
        write("generation_config.json", r#"{"eos_token_id": [7, 9]}"#);
        assert_eq!(eos_token_ids(dir.path()).unwrap(), vec![7, 9]);
        write("generation_config.json", r#"{"eos_token_id": null}"#);
        assert_eq!(eos_token_ids(dir.path()).unwrap(), vec![2]);
        write("generation_config.json", r#"{"eos_token_id": [-1]}"#);
        let e = eos_token_ids(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("generation_config.json") && e.contains("eos_token_id"),
            "{e}"
        );
        write("generation_config.json", "{");
        assert!(eos_token_ids(dir.path()).is_err());
    }
}
