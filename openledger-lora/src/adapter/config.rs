//! `adapter_config.json`: the PEFT LoRA fields that change the math, and PEFT's rules for which
//! modules an adapter touches and with which rank and scale.
//!
//! Fields that do not change the weights (`task_type`, `lora_dropout`, `inference_mode`,
//! `revision`, ...) are ignored. Fields that would change the model in ways this crate does not
//! implement (`target_parameters`, `layer_replication`, `trainable_token_indices`) are rejected
//! with [`LoraError::Unsupported`] rather than silently dropped.
//!
//! Matching follows PEFT:
//! - `target_modules` as a list: a module matches when its name equals an entry or ends with
//!   `"." + entry`; `layers_to_transform` / `layers_pattern` then restrict suffix matches to the
//!   listed layer indices.
//! - `target_modules` as a string: a regular expression that must match the whole module name.
//! - `"all-linear"`: every linear layer except the output layer (resolved against a base model).
//! - `exclude_modules` (list or regex) wins over `target_modules`.
//! - `rank_pattern` / `alpha_pattern` keys are regexes matched against the end of the module
//!   name after a `.` (PEFT's `get_pattern_key`); the first key in file order wins.
//!
//! Patterns without regex syntax (most keys, like `"v_proj"`) are matched as plain names; the
//! others compile to byte regexes without Unicode classes (module names are ASCII; `\d` is
//! `[0-9]`) under a size limit, and a pattern longer than [`MAX_PATTERN_LEN`] is refused, so a
//! hostile config cannot make loading slow.
//!
//! ```
//! use openledger_lora::adapter::config::LoraConfig;
//!
//! let cfg = LoraConfig::from_json(br#"{
//!     "peft_type": "LORA", "r": 8, "lora_alpha": 16,
//!     "target_modules": ["q_proj", "v_proj"],
//!     "rank_pattern": {"layers.1.self_attn.v_proj": 2}
//! }"#).unwrap();
//! assert!(cfg.targets("model.layers.0.self_attn.q_proj"));
//! assert!(!cfg.targets("model.layers.0.self_attn.k_proj"));
//! assert_eq!(cfg.rank_for("model.layers.1.self_attn.v_proj"), 2);
//! assert_eq!(cfg.scale_for("model.layers.0.self_attn.q_proj"), 2.0);
//! ```

use regex::bytes::{Regex, RegexBuilder};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::error::LoraError;

/// File name of the adapter config inside an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// Which modules an adapter targets (`target_modules`).
#[derive(Clone, Debug, PartialEq)]
pub enum TargetModules {
    /// Exact module names or name suffixes after a `.`.
    Names(Vec<String>),
    /// A regular expression matched against the whole module name.
    Regex(String),
    /// PEFT's `"all-linear"` shorthand: every linear layer except the output layer.
    AllLinear,
}

/// Which biases the adapter saved (`bias`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiasMode {
    /// No bias is trained or saved.
    None,
    /// Every bias of the base model was trained; saved ones replace the base's.
    All,
    /// Biases of the LoRA-targeted modules were trained; saved ones replace the base's.
    LoraOnly,
}

impl BiasMode {
    fn as_str(self) -> &'static str {
        match self {
            BiasMode::None => "none",
            BiasMode::All => "all",
            BiasMode::LoraOnly => "lora_only",
        }
    }
}

/// The plain data of a LoRA config: what [`LoraConfig`] validates and what the adapter builder
/// writes. Every field changes the math; see the module docs for the matching rules.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigSpec {
    /// Default rank `r`.
    pub r: usize,
    /// Default `lora_alpha`.
    pub lora_alpha: f64,
    /// Scale `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// `target_modules`.
    pub target_modules: TargetModules,
    /// `exclude_modules` ([`TargetModules::AllLinear`] is not allowed here).
    pub exclude_modules: Option<TargetModules>,
    /// `rank_pattern`, in file order.
    pub rank_pattern: Vec<(String, usize)>,
    /// `alpha_pattern`, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// `layers_to_transform`.
    pub layers_to_transform: Option<Vec<usize>>,
    /// `layers_pattern`.
    pub layers_pattern: Option<Vec<String>>,
    /// The base weights of targeted modules are stored `[in, out]` (GPT-2 `Conv1D`).
    pub fan_in_fan_out: bool,
    /// `bias`.
    pub bias: BiasMode,
    /// `lora_bias`: `lora_B` carries a bias vector.
    pub lora_bias: bool,
    /// `use_dora`: weight-decomposed LoRA with a magnitude vector per module.
    pub use_dora: bool,
    /// `modules_to_save`: modules whose full weights the adapter replaces.
    pub modules_to_save: Vec<String>,
}

impl ConfigSpec {
    /// A plain LoRA config: rank `r`, `lora_alpha`, the given target names, everything else off.
    pub fn new(r: usize, lora_alpha: f64, targets: &[&str]) -> Self {
        ConfigSpec {
            r,
            lora_alpha,
            use_rslora: false,
            target_modules: TargetModules::Names(targets.iter().map(|s| s.to_string()).collect()),
            exclude_modules: None,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            layers_to_transform: None,
            layers_pattern: None,
            fan_in_fan_out: false,
            bias: BiasMode::None,
            lora_bias: false,
            use_dora: false,
            modules_to_save: Vec::new(),
        }
    }

    /// Serialises as a PEFT `adapter_config.json`.
    pub fn to_json(&self) -> String {
        fn targets(t: &TargetModules) -> Value {
            match t {
                TargetModules::Names(n) => json!(n),
                TargetModules::Regex(r) => json!(r),
                TargetModules::AllLinear => json!("all-linear"),
            }
        }
        // serde_json's map may sort keys; pattern order is kept by writing the maps by hand.
        let pattern = |entries: Vec<(String, Value)>| -> String {
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k), v))
                .collect();
            format!("{{{}}}", body.join(", "))
        };
        let rank = pattern(
            self.rank_pattern
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        );
        let alpha = pattern(
            self.alpha_pattern
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        );
        let rest = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "target_modules": targets(&self.target_modules),
            "exclude_modules": self.exclude_modules.as_ref().map(targets),
            "layers_to_transform": self.layers_to_transform,
            "layers_pattern": self.layers_pattern,
            "fan_in_fan_out": self.fan_in_fan_out,
            "bias": self.bias.as_str(),
            "lora_bias": self.lora_bias,
            "use_dora": self.use_dora,
            "modules_to_save": if self.modules_to_save.is_empty() { Value::Null } else { json!(self.modules_to_save) },
            "lora_dropout": 0.0,
            "inference_mode": true,
        });
        let rest = serde_json::to_string_pretty(&rest).unwrap_or_else(|_| "{}".into());
        // Splice the ordered pattern maps into the object.
        let trimmed = rest.trim_end().trim_end_matches('}').trim_end();
        format!("{trimmed},\n  \"rank_pattern\": {rank},\n  \"alpha_pattern\": {alpha}\n}}\n")
    }
}

/// The longest regex pattern a config may hold, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// How much memory one compiled pattern may take (the regex crate's compile-time limit).
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A compiled config pattern: plain names compare without a regex.
#[derive(Clone, Debug)]
enum Matcher {
    /// The whole module name equals the pattern.
    Exact(String),
    /// The module name is the pattern or ends with `"." + pattern`.
    Suffix(String),
    /// A regex.
    Regex(Regex),
}

impl Matcher {
    fn is_match(&self, module: &str) -> bool {
        match self {
            Matcher::Exact(p) => module == p,
            Matcher::Suffix(p) => module == p || ends_with_component(module, p),
            Matcher::Regex(re) => re.is_match(module.as_bytes()),
        }
    }
}

/// Whether `p` holds no regex syntax (it then matches only itself).
fn is_plain(p: &str) -> bool {
    regex::escape(p) == p
}

/// A validated LoRA config with its regular expressions compiled.
#[derive(Clone, Debug)]
pub struct LoraConfig {
    spec: ConfigSpec,
    target_regex: Option<Matcher>,
    exclude_regex: Option<Matcher>,
    rank_regexes: Vec<Matcher>,
    alpha_regexes: Vec<Matcher>,
    layer_regexes: Vec<Regex>,
}

impl LoraConfig {
    /// Parses `adapter_config.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, LoraError> {
        let raw: RawConfig =
            serde_json::from_slice(bytes).map_err(|e| LoraError::config(e.to_string()))?;
        Self::new(raw.into_spec()?)
    }

    /// Validates a spec (r > 0, alphas finite within f32's range, compilable regexes, no DoRA
    /// with `lora_bias`).
    pub fn new(spec: ConfigSpec) -> Result<Self, LoraError> {
        if spec.r == 0 {
            return Err(LoraError::field("r", "must be a positive integer, found 0"));
        }
        // The scale `alpha / r` (or `/ √r`) is applied in f32: an alpha past f32's range would
        // make it infinite.
        let in_range = |a: f64| a.is_finite() && a.abs() <= f64::from(f32::MAX);
        if !in_range(spec.lora_alpha) {
            return Err(LoraError::field(
                "lora_alpha",
                format!(
                    "{} is not a finite number within f32's range",
                    spec.lora_alpha
                ),
            ));
        }
        for (k, r) in &spec.rank_pattern {
            if *r == 0 {
                return Err(LoraError::field(
                    format!("rank_pattern.{k}"),
                    "must be a positive integer, found 0",
                ));
            }
        }
        for (k, a) in &spec.alpha_pattern {
            if !in_range(*a) {
                return Err(LoraError::field(
                    format!("alpha_pattern.{k}"),
                    format!("{a} is not a finite number within f32's range"),
                ));
            }
        }
        if spec.use_dora && spec.lora_bias {
            return Err(LoraError::field(
                "lora_bias",
                "lora_bias = true is not supported together with use_dora (PEFT rejects it too)",
            ));
        }
        let whole = |field: &str, p: &str| -> Result<Matcher, LoraError> {
            if is_plain(p) {
                Ok(Matcher::Exact(p.to_string()))
            } else {
                Ok(Matcher::Regex(compile(field, &format!("^(?:{p})$"), p)?))
            }
        };
        let target_regex = match &spec.target_modules {
            TargetModules::Regex(p) => Some(whole("target_modules", p)?),
            _ => None,
        };
        let exclude_regex = match &spec.exclude_modules {
            Some(TargetModules::Regex(p)) => Some(whole("exclude_modules", p)?),
            Some(TargetModules::AllLinear) => {
                return Err(LoraError::field(
                    "exclude_modules",
                    "\"all-linear\" is only meaningful in target_modules",
                ));
            }
            _ => None,
        };
        let pattern_regexes =
            |field: &str, keys: Vec<&String>| -> Result<Vec<Matcher>, LoraError> {
                keys.into_iter()
                    .map(|k| {
                        if is_plain(k) {
                            Ok(Matcher::Suffix(k.clone()))
                        } else {
                            Ok(Matcher::Regex(compile(
                                field,
                                &format!("^(.*\\.)?({k})$"),
                                k,
                            )?))
                        }
                    })
                    .collect()
            };
        let rank_regexes = pattern_regexes(
            "rank_pattern",
            spec.rank_pattern.iter().map(|p| &p.0).collect(),
        )?;
        let alpha_regexes = pattern_regexes(
            "alpha_pattern",
            spec.alpha_pattern.iter().map(|p| &p.0).collect(),
        )?;
        // Layer patterns are needed only when layers are restricted.
        let restricted = spec
            .layers_to_transform
            .as_ref()
            .is_some_and(|l| !l.is_empty());
        let layer_regexes = match &spec.layers_pattern {
            _ if !restricted => Vec::new(),
            Some(pats) if !pats.is_empty() => pats
                .iter()
                .map(|p| compile("layers_pattern", &format!(r"^.*\.{p}\.(\d+)\."), p))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![compile("layers_pattern", r"^.*\.[^.]*\.(\d+)\.", "")?],
        };
        Ok(LoraConfig {
            spec,
            target_regex,
            exclude_regex,
            rank_regexes,
            alpha_regexes,
            layer_regexes,
        })
    }

    /// The plain data of this config.
    pub fn spec(&self) -> &ConfigSpec {
        &self.spec
    }

    /// Default rank `r`.
    pub fn r(&self) -> usize {
        self.spec.r
    }

    /// Default `lora_alpha`.
    pub fn lora_alpha(&self) -> f64 {
        self.spec.lora_alpha
    }

    /// Whether DoRA is on.
    pub fn use_dora(&self) -> bool {
        self.spec.use_dora
    }

    /// Whether targeted base weights are stored `[in, out]`.
    pub fn fan_in_fan_out(&self) -> bool {
        self.spec.fan_in_fan_out
    }

    /// Whether `module` is excluded by `exclude_modules`.
    pub fn excludes(&self, module: &str) -> bool {
        match (&self.spec.exclude_modules, &self.exclude_regex) {
            (_, Some(m)) => m.is_match(module),
            (Some(TargetModules::Names(names)), None) => names
                .iter()
                .any(|n| module == n || ends_with_component(module, n)),
            _ => false,
        }
    }

    /// Whether PEFT would put a LoRA layer on `module` (PEFT's `check_target_module_exists`).
    ///
    /// For `"all-linear"` this answers `true` for every module but `lm_head`; use
    /// [`LoraConfig::select_modules`] with the base model's linear layers for the exact set.
    pub fn targets(&self, module: &str) -> bool {
        if self.excludes(module) {
            return false;
        }
        match &self.spec.target_modules {
            TargetModules::Regex(_) => self
                .target_regex
                .as_ref()
                .is_some_and(|m| m.is_match(module)),
            TargetModules::AllLinear => last_component(module) != "lm_head",
            TargetModules::Names(names) => {
                if names.iter().any(|n| n == module) {
                    return true;
                }
                if !names.iter().any(|n| ends_with_component(module, n)) {
                    return false;
                }
                self.layer_allowed(module)
            }
        }
    }

    /// The modules of a base model this config targets, given the base's linear layers (for
    /// `"all-linear"`), all of its weight-holding modules, and its output layer's name.
    ///
    /// `"all-linear"` is expanded as PEFT does: to the set of last name components of the linear
    /// layers, minus the output layer's, then matched as a name list.
    pub fn select_modules<'a>(
        &self,
        all_modules: impl IntoIterator<Item = &'a str>,
        linear_modules: &[&str],
        output_layer: Option<&str>,
    ) -> Vec<String> {
        let expanded;
        let cfg = if self.spec.target_modules == TargetModules::AllLinear {
            let mut names: Vec<String> = linear_modules
                .iter()
                .map(|m| last_component(m).to_string())
                .collect();
            names.sort();
            names.dedup();
            if let Some(out) = output_layer {
                names.retain(|n| n != last_component(out));
            }
            let mut spec = self.spec.clone();
            spec.target_modules = TargetModules::Names(names);
            expanded = LoraConfig {
                spec,
                ..self.clone()
            };
            &expanded
        } else {
            self
        };
        all_modules
            .into_iter()
            .filter(|m| cfg.targets(m))
            .map(str::to_string)
            .collect()
    }

    /// The rank PEFT gives `module`: its `rank_pattern` entry or `r`.
    pub fn rank_for(&self, module: &str) -> usize {
        self.rank_regexes
            .iter()
            .position(|m| m.is_match(module))
            .map(|i| self.spec.rank_pattern[i].1)
            .unwrap_or(self.spec.r)
    }

    /// The `lora_alpha` PEFT gives `module`: its `alpha_pattern` entry or `lora_alpha`.
    pub fn alpha_for(&self, module: &str) -> f64 {
        self.alpha_regexes
            .iter()
            .position(|m| m.is_match(module))
            .map(|i| self.spec.alpha_pattern[i].1)
            .unwrap_or(self.spec.lora_alpha)
    }

    /// The LoRA scale of `module`: `alpha / r`, or `alpha / sqrt(r)` with `use_rslora`.
    pub fn scale_for(&self, module: &str) -> f32 {
        let r = self.rank_for(module) as f64;
        let alpha = self.alpha_for(module);
        let s = if self.spec.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        };
        s as f32
    }

    /// Whether `module` is (a submodule of) a `modules_to_save` entry (PEFT matches by suffix).
    pub fn is_saved_module(&self, module: &str) -> bool {
        self.spec
            .modules_to_save
            .iter()
            .any(|m| module.ends_with(m.as_str()))
    }

    fn layer_allowed(&self, module: &str) -> bool {
        let Some(layers) = &self.spec.layers_to_transform else {
            return true;
        };
        if layers.is_empty() {
            return true;
        }
        for re in &self.layer_regexes {
            if let Some(c) = re.captures(module.as_bytes()) {
                return std::str::from_utf8(&c[1])
                    .ok()
                    .and_then(|d| d.parse::<usize>().ok())
                    .is_some_and(|i| layers.contains(&i));
            }
        }
        false
    }
}

/// The last `.`-separated component of a module name.
pub(crate) fn last_component(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

fn ends_with_component(module: &str, suffix: &str) -> bool {
    module.len() > suffix.len()
        && module.ends_with(suffix)
        && module.as_bytes()[module.len() - suffix.len() - 1] == b'.'
}

fn compile(field: &str, full: &str, pattern: &str) -> Result<Regex, LoraError> {
    let refuse = |reason: String| LoraError::InvalidRegex {
        file: CONFIG_FILE.to_string(),
        field: field.to_string(),
        pattern: pattern.chars().take(80).collect(),
        reason,
    };
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(refuse(format!(
            "{} bytes long, more than the {MAX_PATTERN_LEN} allowed",
            pattern.len()
        )));
    }
    RegexBuilder::new(full)
        .unicode(false)
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| refuse(e.to_string()))
}

/// A JSON object read with its keys in file order.
struct OrderedMap(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedMap, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    peft_type: Option<String>,
    #[serde(default)]
    r: Option<Value>,
    #[serde(default)]
    lora_alpha: Option<Value>,
    #[serde(default)]
    use_rslora: Option<bool>,
    #[serde(default)]
    target_modules: Option<Value>,
    #[serde(default)]
    exclude_modules: Option<Value>,
    #[serde(default)]
    rank_pattern: Option<OrderedMap>,
    #[serde(default)]
    alpha_pattern: Option<OrderedMap>,
    #[serde(default)]
    layers_to_transform: Option<Value>,
    #[serde(default)]
    layers_pattern: Option<Value>,
    #[serde(default)]
    fan_in_fan_out: Option<bool>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    lora_bias: Option<bool>,
    #[serde(default)]
    use_dora: Option<bool>,
    #[serde(default)]
    modules_to_save: Option<Value>,
    #[serde(default)]
    target_parameters: Option<Value>,
    #[serde(default)]
    layer_replication: Option<Value>,
    #[serde(default)]
    trainable_token_indices: Option<Value>,
}

fn positive_int(field: &str, v: &Value) -> Result<usize, LoraError> {
    match v.as_u64() {
        Some(0) => Err(LoraError::field(
            field,
            "must be a positive integer, found 0",
        )),
        Some(n) => usize::try_from(n).map_err(|_| LoraError::field(field, "too large")),
        None => Err(LoraError::field(
            field,
            format!("must be a positive integer, found {v}"),
        )),
    }
}

fn number(field: &str, v: &Value) -> Result<f64, LoraError> {
    v.as_f64()
        .ok_or_else(|| LoraError::field(field, format!("must be a number, found {v}")))
}

fn string_list(field: &str, v: &Value) -> Result<Vec<String>, LoraError> {
    let arr = v
        .as_array()
        .ok_or_else(|| LoraError::field(field, format!("must be a list of strings, found {v}")))?;
    arr.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| LoraError::field(field, format!("must hold strings, found {s}")))
        })
        .collect()
}

fn targets_value(field: &str, v: &Value) -> Result<TargetModules, LoraError> {
    match v {
        Value::String(s) if s.eq_ignore_ascii_case("all-linear") => Ok(TargetModules::AllLinear),
        Value::String(s) => Ok(TargetModules::Regex(s.clone())),
        _ => Ok(TargetModules::Names(string_list(field, v)?)),
    }
}

fn is_set(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

impl RawConfig {
    fn into_spec(self) -> Result<ConfigSpec, LoraError> {
        let peft_type = self
            .peft_type
            .ok_or_else(|| LoraError::config("missing field `peft_type`"))?;
        if peft_type != "LORA" {
            return Err(LoraError::UnsupportedPeftType {
                file: CONFIG_FILE.to_string(),
                found: peft_type,
            });
        }
        for (name, v) in [
            ("target_parameters", &self.target_parameters),
            ("layer_replication", &self.layer_replication),
            ("trainable_token_indices", &self.trainable_token_indices),
        ] {
            if is_set(v) {
                return Err(LoraError::Unsupported {
                    what: format!("{CONFIG_FILE}: `{name}` is set"),
                });
            }
        }
        let r = positive_int("r", self.r.as_ref().unwrap_or(&json!(8)))?;
        let lora_alpha = number("lora_alpha", self.lora_alpha.as_ref().unwrap_or(&json!(8)))?;
        let target_modules = match &self.target_modules {
            None | Some(Value::Null) => {
                return Err(LoraError::field(
                    "target_modules",
                    "is missing; a saved adapter must name its target modules",
                ));
            }
            Some(v) => targets_value("target_modules", v)?,
        };
        let exclude_modules = match &self.exclude_modules {
            None | Some(Value::Null) => None,
            Some(v) => Some(targets_value("exclude_modules", v)?),
        };
        let rank_pattern = self
            .rank_pattern
            .map(|m| m.0)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), positive_int(&format!("rank_pattern.{k}"), &v)?)))
            .collect::<Result<Vec<_>, LoraError>>()?;
        let alpha_pattern = self
            .alpha_pattern
            .map(|m| m.0)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| Ok((k.clone(), number(&format!("alpha_pattern.{k}"), &v)?)))
            .collect::<Result<Vec<_>, LoraError>>()?;
        let layers_to_transform = match &self.layers_to_transform {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(vec![n.as_u64().ok_or_else(|| {
                LoraError::field(
                    "layers_to_transform",
                    format!("must be a layer index, found {n}"),
                )
            })? as usize]),
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| {
                        x.as_u64().map(|i| i as usize).ok_or_else(|| {
                            LoraError::field(
                                "layers_to_transform",
                                format!("must hold layer indices, found {x}"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(v) => {
                return Err(LoraError::field(
                    "layers_to_transform",
                    format!("must be an index or a list of indices, found {v}"),
                ));
            }
        };
        let layers_pattern = match &self.layers_pattern {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(vec![s.clone()]),
            Some(v) => Some(string_list("layers_pattern", v)?),
        };
        let bias = match self.bias.as_deref() {
            None | Some("none") => BiasMode::None,
            Some("all") => BiasMode::All,
            Some("lora_only") => BiasMode::LoraOnly,
            Some(other) => {
                return Err(LoraError::field(
                    "bias",
                    format!("must be \"none\", \"all\" or \"lora_only\", found {other:?}"),
                ));
            }
        };
        let modules_to_save = match &self.modules_to_save {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => string_list("modules_to_save", v)?,
        };
        Ok(ConfigSpec {
            r,
            lora_alpha,
            use_rslora: self.use_rslora.unwrap_or(false),
            target_modules,
            exclude_modules,
            rank_pattern,
            alpha_pattern,
            layers_to_transform,
            layers_pattern,
            fan_in_fan_out: self.fan_in_fan_out.unwrap_or(false),
            bias,
            lora_bias: self.lora_bias.unwrap_or(false),
            use_dora: self.use_dora.unwrap_or(false),
            modules_to_save,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> LoraConfig {
        LoraConfig::from_json(
            format!(r#"{{"peft_type": "LORA", "r": 8, "lora_alpha": 8, {extra}}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn suffix_match_needs_a_dot_boundary() {
        let c = cfg(r#""target_modules": ["proj"]"#);
        assert!(!c.targets("model.layers.0.self_attn.q_proj"));
        assert!(c.targets("model.proj"));
        assert!(c.targets("proj"));
    }

    #[test]
    fn pattern_keys_follow_file_order_and_match_after_a_dot() {
        let c = cfg(
            r#""target_modules": ["q_proj"], "rank_pattern": {"layers.0.self_attn.q_proj": 2, "q_proj": 4}"#,
        );
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 2);
        assert_eq!(c.rank_for("model.layers.1.self_attn.q_proj"), 4);
        assert_eq!(c.rank_for("model.layers.1.self_attn.xq_proj"), 8);
    }

    #[test]
    fn rslora_scales_by_square_root_of_rank() {
        let c = LoraConfig::from_json(
            br#"{"peft_type": "LORA", "r": 4, "lora_alpha": 16, "use_rslora": true,
                 "target_modules": ["q_proj"]}"#,
        )
        .unwrap();
        assert_eq!(c.scale_for("a.q_proj"), 8.0);
    }

    #[test]
    fn exclude_modules_wins_over_targets() {
        let c =
            cfg(r#""target_modules": ".*proj", "exclude_modules": ["layers.1.self_attn.q_proj"]"#);
        assert!(c.targets("model.layers.0.self_attn.q_proj"));
        assert!(!c.targets("model.layers.1.self_attn.q_proj"));
    }

    #[test]
    fn to_json_round_trips_the_spec() {
        let mut spec = ConfigSpec::new(4, 8.0, &["q_proj", "v_proj"]);
        spec.rank_pattern = vec![("z".into(), 2), ("a".into(), 3)];
        spec.alpha_pattern = vec![("v_proj".into(), 32.0)];
        spec.layers_to_transform = Some(vec![1]);
        spec.bias = BiasMode::LoraOnly;
        let back = LoraConfig::from_json(spec.to_json().as_bytes()).unwrap();
        assert_eq!(back.spec(), &spec);
    }
}
