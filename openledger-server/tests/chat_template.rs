//! Chat templates rendered with minijinja equal transformers' Jinja2 renderings
//! (`fixtures/chat-templates/reference.json`, made by
//! `scripts/make_chat_template_reference.py`): byte for byte, and a template's
//! `raise_exception` is our refusal with its message.

use std::collections::BTreeMap;
use std::path::Path;

use openledger_server::{ChatMessage, ChatTemplate, TemplateError};
use serde_json::Value;

#[test]
fn renderings_equal_transformers() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/chat-templates/reference.json");
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tokens: BTreeMap<String, String> =
        serde_json::from_value(refs["special_tokens"].clone()).unwrap();
    let (mut same, mut refused) = (0, 0);
    for t in refs["templates"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let template = ChatTemplate::new(t["source"].as_str().unwrap(), tokens.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for case in t["cases"].as_array().unwrap() {
            let add = case["add_generation_prompt"].as_bool().unwrap();
            let messages: Vec<ChatMessage> =
                serde_json::from_value(case["messages"].clone()).unwrap();
            let got = template.render(&messages, add);
            let what = format!(
                "{name} / {} / add_generation_prompt={add}",
                case["conversation"]
            );
            match (&case["text"], &case["error"]) {
                (Value::String(want), _) => {
                    assert_eq!(
                        got.unwrap_or_else(|e| panic!("{what}: {e}")),
                        *want,
                        "{what}"
                    );
                    same += 1;
                }
                (_, Value::String(message)) => match got {
                    Err(TemplateError::Render(m)) => {
                        assert!(
                            m.contains(message.as_str()),
                            "{what}: {m:?} lacks {message:?}"
                        );
                        refused += 1;
                    }
                    other => panic!("{what}: expected the refusal {message:?}, got {other:?}"),
                },
                _ => panic!("{what}: a case needs a text or an error"),
            }
        }
    }
    assert_eq!((same, refused), (46, 4));
}

#[test]
fn model_folders_give_their_template_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_model_dir(dir.path()).unwrap().is_none());
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<s>", "special": true}, "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    let m = [ChatMessage::new("user", "hi")];
    assert_eq!(t.render(&m, false).unwrap(), "<s>hi");
    // chat_template.jinja wins over the config's template.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "[{{ messages | length }}]",
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&m, false).unwrap(), "[1]");
    // Broken files and templates are errors naming what is wrong.
    std::fs::write(dir.path().join("chat_template.jinja"), "{% for %}").unwrap();
    assert!(matches!(
        ChatTemplate::from_model_dir(dir.path()),
        Err(TemplateError::Syntax(_))
    ));
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        "{\"chat_template\": 5}",
    )
    .unwrap();
    assert!(matches!(
        ChatTemplate::from_model_dir(dir.path()),
        Err(TemplateError::File { .. })
    ));
    std::fs::write(dir.path().join("tokenizer_config.json"), "{trunc").unwrap();
    assert!(matches!(
        ChatTemplate::from_model_dir(dir.path()),
        Err(TemplateError::File { .. })
    ));
}

#[test]
fn a_runaway_template_runs_out_of_fuel() {
    let t = ChatTemplate::new(
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        BTreeMap::new(),
    )
    .unwrap();
    assert!(matches!(
        t.render(&[], false),
        Err(TemplateError::Render(_))
    ));
}
