//! Facts of the shipped PEFT adapters (`openledger_lora::adapter`, `base`).

use openledger_lora::adapter::base::BaseModel;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use serde_json::{Value, json};

use crate::repo_root;

pub fn adapters() -> Value {
    let rel = "fixtures/peft/tiny-llama";
    let base = BaseModel::from_dir(&repo_root().join(rel)).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join(rel).join("adapters"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let out = names
        .iter()
        .map(|name| {
            let path = format!("{rel}/adapters/{name}");
            let adapter = LoraAdapter::from_dir(&repo_root().join(&path), &LoadOptions::default())
                .unwrap();
            let cfg = adapter.config().spec();
            let modules: Vec<Value> = adapter
                .modules()
                .map(|(m, lm)| {
                    json!({
                        "name": m, "rank": lm.rank(), "in_features": lm.in_features(),
                        "out_features": lm.out_features(), "scale": f64::from(lm.scale()),
                        "scale_bits": format!("{:#010x}", lm.scale().to_bits()),
                    })
                })
                .collect();
            let validation = match base.validate(&adapter) {
                Ok(r) => json!({"ok": true, "modules_checked": r.modules_checked, "targeted_without_weights": r.targeted_without_weights}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            };
            json!({
                "name": name, "path": path, "base": rel, "r": cfg.r, "lora_alpha": cfg.lora_alpha,
                "use_rslora": cfg.use_rslora, "use_dora": cfg.use_dora,
                "module_count": adapter.num_modules(), "resident_bytes": adapter.resident_bytes(),
                "modules": modules, "validation": validation,
            })
        })
        .collect();
    Value::Array(out)
}
