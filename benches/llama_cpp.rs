//! Side by side with llama.cpp on this machine, in the same run: the same pretrained model
//! (SmolLM2-135M-Instruct) in the same GGUF files, the same token ids, greedy, both engines on
//! the same threads.
//!
//! `bash benches/llama_cpp/run.sh` prepares and runs it: it installs `node-llama-cpp` 3.21.1
//! from npm (prebuilt llama.cpp CPU binaries) and the `gguf` Python package into
//! `target/llama-cpp-bench/`, converts the model fetched by `scripts/fetch-models.sh` (Q4_1) into
//! F32, F16, BF16 and Q8_0 GGUF files and writes 32 random rank-16 LoRA adapters on q_proj and
//! v_proj, each as a PEFT folder and as a GGUF LoRA file
//! (`benches/llama_cpp/convert.py`), then runs `cargo bench -p openledger-benches --bench
//! llama_cpp`.
//!
//! Pairs (ours / llama.cpp): `f32` / F32, `stored` / F16 and BF16 (the 16-bit weights kept as
//! stored), `int8-g32` / Q8_0 (ours holds the Q8_0 file's blocks as they are: 32 int8 weights
//! and a scale, our int8 in groups of 32), `stored` / Q4_1 (the model's own Q4_1 file: ours
//! holds each block's 4-bit values as int8 with its scale and minimum, llama.cpp multiplies
//! the blocks as they are). Cases, each in a process of its own
//! (so its peak resident memory, `VmHWM`, is its own):
//! * **single**: one stream, a 118-token prompt then 128 new tokens, 5 times; prompt tokens/s
//!   from the time to the first new token, decode tokens/s over the 127 after it (medians).
//! * **batch**: 32 concurrent requests (chat prompts of 14 to 20 tokens, 128 new tokens each),
//!   no adapter: ours through the engine's continuous batching, llama.cpp's as parallel
//!   sequences of one context; aggregate tokens/s = all new tokens over the wall time
//!   (node-llama-cpp ends a sequence at an end-of-generation token, so llama.cpp's count can be
//!   lower; ours runs every request to 128 tokens).
//! * **adapters**: the same 32 requests, request i with adapter i. Ours: the 32 adapters
//!   attached and batched together (SGMV); llama.cpp attaches LoRA adapters to a context, so
//!   it runs one context per adapter, all at once (`contexts`) or one after another
//!   (`sequential`); the better is its figure.
//! * **adapter, one stream**: the single case with adapter 0 (f32 pair): its greedy tokens
//!   check that both engines apply the same adapter the same way.
//!
//! Targets (ratios ours / llama.cpp): single-stream decode ≥ 1.0 at the same precision, peak
//! memory of one stream ≤ 1.0, aggregate tokens/s of 32 requests with 32 adapters ≥ 3.
//!
//! Writes `llama_cpp.json` and `llama_cpp.png` under `target/bench-results/` (or
//! `$OPENLEDGER_BENCH_OUT`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use openledger_benches::{Report, median, status_bytes};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{GgufFile, PagedModel, WeightFormat};
use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{
    AllReady, Engine, EngineConfig, Event, KvDtype, Preemption, Request, SamplingParams,
};
use plotters::prelude::*;
use serde_json::{Value, json};

const NEW_TOKENS: usize = 128;
const REPS: usize = 5;
const THREADS: usize = 2;
const ADAPTERS: usize = 32;

/// The user turns of the 32 concurrent requests.
const QUESTIONS: [&str; 32] = [
    "What does aspirin treat?",
    "How do vaccines train the immune system?",
    "Why is the sky blue?",
    "Explain photosynthesis in two sentences.",
    "What is a prime number?",
    "How does a bicycle stay upright?",
    "Name three uses of copper.",
    "What causes the seasons on Earth?",
    "How do I boil an egg?",
    "What is the capital of Australia?",
    "Describe how rain forms.",
    "What is the difference between weather and climate?",
    "How does a refrigerator keep food cold?",
    "Why do cats purr?",
    "What is machine learning?",
    "Give me a tip for learning a new language.",
    "How do bees make honey?",
    "What does a mitochondrion do?",
    "Why does ice float on water?",
    "How far away is the Moon?",
    "What is the boiling point of water at sea level?",
    "Write a haiku about autumn.",
    "What is inflation in economics?",
    "How do plants absorb water?",
    "What is the largest planet in our solar system?",
    "How does a compass work?",
    "Why should I drink water every day?",
    "What is a black hole?",
    "Suggest a name for a small bakery.",
    "How do earthquakes happen?",
    "What is the role of the kidneys?",
    "How can I sleep better at night?",
];

/// The single-stream prompt's user turn (118 tokens with the chat template).
const LONG: &str = "Read the following note and summarise it for a patient. Aspirin, also known as \
acetylsalicylic acid, is a medication used to reduce pain, fever, or inflammation. Specific \
inflammatory conditions which aspirin is used to treat include Kawasaki disease, pericarditis, \
and rheumatic fever. Aspirin is also used long-term to help prevent further heart attacks, \
ischaemic strokes, and blood clots in people at high risk. Common side effects include an upset \
stomach. More significant side effects include stomach ulcers and stomach bleeding.";

fn chat(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

/// One case of ours, in this process: the JSON line llama_cpp.mjs prints for the same case.
fn ours(spec: &Value) -> Value {
    let prompts: Vec<Vec<u32>> = serde_json::from_value(spec["prompts"].clone()).expect("prompts");
    let format: WeightFormat = spec["format"].as_str().unwrap().parse().expect("format");
    let rss_before = status_bytes("VmRSS:");
    let t0 = Instant::now();
    let gguf = GgufFile::open(Path::new(spec["model"].as_str().unwrap())).expect("open");
    let model = gguf
        .to_model_with_format(format, &mut |_, _| {})
        .expect("model");
    drop(gguf);
    let mut paged = PagedModel::new(model);
    let load_s = t0.elapsed().as_secs_f64();
    let case = spec["case"].as_str().unwrap();
    let mut ids: Vec<Option<AdapterId>> = vec![None; prompts.len()];
    let adapter_paths: Vec<String> = match case {
        "single" => spec["adapter"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
        "adapters" => serde_json::from_value(spec["adapters"].clone()).expect("adapters"),
        _ => Vec::new(),
    };
    for (i, path) in adapter_paths.iter().enumerate() {
        let adapter =
            LoraAdapter::from_dir(Path::new(path), &LoadOptions::default()).expect("adapter");
        let id = AdapterId::new(&format!("a{i}")).unwrap();
        paged.attach(id.clone(), &adapter).expect("attach");
        ids[i] = Some(id);
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let block_size = 16;
    let config = EngineConfig {
        kv_layout: paged.kv_layout(block_size),
        num_blocks: prompts.len() * (longest + NEW_TOKENS).div_ceil(block_size) + 8,
        max_tokens_per_step: 512,
        max_running: prompts.len(),
        max_context: longest + NEW_TOKENS,
        preemption: Preemption::Recompute,
        kv_dtype: KvDtype::F32,
    };
    let mut engine = Engine::new(paged, AllReady, config).expect("engine");
    let request = |prompt: &Vec<u32>, adapter: Option<AdapterId>| Request {
        prompt: prompt.clone(),
        adapter,
        sampling: SamplingParams {
            temperature: 0.0,
            max_new_tokens: NEW_TOKENS,
            ..Default::default()
        },
    };
    let tokens_of = |events: Vec<Event>| -> Vec<u32> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Token { token, .. } => Some(token),
                Event::Failed { error, .. } => panic!("request failed: {error}"),
                Event::Finished { .. } => None,
            })
            .collect()
    };
    // The file's name only: the results carry no machine's paths.
    let model_name = Path::new(spec["model"].as_str().unwrap())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let mut out = json!({"engine": "ours", "case": case, "model": model_name,
        "format": format.to_string(), "load_s": load_s, "rss_before_load_bytes": rss_before});
    if case == "single" {
        let (mut prefill, mut decode, mut first) = (Vec::new(), Vec::new(), None);
        for _ in 0..REPS {
            let handle = engine.submit(request(&prompts[0], ids[0].clone()));
            let t0 = Instant::now();
            engine.step().expect("step");
            let t_first = t0.elapsed().as_secs_f64();
            while engine.pending() > 0 {
                engine.step().expect("step");
            }
            let t_end = t0.elapsed().as_secs_f64();
            let tokens = tokens_of(handle.collect());
            assert_eq!(tokens.len(), NEW_TOKENS);
            prefill.push(prompts[0].len() as f64 / t_first);
            decode.push((tokens.len() - 1) as f64 / (t_end - t_first));
            first.get_or_insert(tokens);
        }
        out["prompt_tokens_per_s"] = json!(median(&prefill));
        out["decode_tokens_per_s"] = json!(median(&decode));
        out["decode_runs"] = json!(decode);
        out["tokens"] = json!(first);
    } else {
        let start = Instant::now();
        let handles: Vec<_> = prompts
            .iter()
            .zip(&ids)
            .map(|(p, a)| engine.submit(request(p, a.clone())))
            .collect();
        while engine.pending() > 0 {
            engine.step().expect("step");
        }
        let wall = start.elapsed().as_secs_f64();
        let tokens: Vec<Vec<u32>> = handles
            .into_iter()
            .map(|h| tokens_of(h.collect()))
            .collect();
        let total: usize = tokens.iter().map(Vec::len).sum();
        out["aggregate_tokens_per_s"] = json!(total as f64 / wall);
        out["wall_s"] = json!(wall);
        out["tokens_generated"] = json!(total);
        out["tokens"] = json!(tokens);
    }
    out["peak_rss_bytes"] = json!(status_bytes("VmHWM:"));
    out
}

/// Runs one case in a process of its own and reads its JSON line.
fn run_case(engine: &str, spec: &Value, dir: &Path) -> Option<Value> {
    let file = dir.join("case.json");
    std::fs::write(&file, spec.to_string()).expect("write the case");
    let mut cmd = if engine == "ours" {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.env("OPENLEDGER_LLAMA_CPP_CASE", &file);
        c
    } else {
        let mut c = Command::new("node");
        c.arg(bench_dir().join("llama_cpp/llama_cpp.mjs"))
            .arg(&file);
        c
    };
    let out = cmd.output().expect("run the case");
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().rev().find(|l| l.starts_with('{')) {
        Some(line) => serde_json::from_str(line).ok(),
        None => {
            eprintln!(
                "{engine} {}: no result ({}): {}",
                spec["case"],
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
    }
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How many leading tokens two greedy continuations share.
fn agree(a: &Value, b: &Value) -> usize {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn main() {
    if let Ok(case) = std::env::var("OPENLEDGER_LLAMA_CPP_CASE") {
        let spec: Value = serde_json::from_slice(&std::fs::read(case).expect("case")).unwrap();
        println!("{}", ours(&spec));
        return;
    }
    let dir = std::env::var_os("OPENLEDGER_LLAMA_CPP_DIR").map_or_else(
        || bench_dir().join("../target/llama-cpp-bench"),
        PathBuf::from,
    );
    let need = [
        dir.join("smollm2-f32.gguf"),
        dir.join("adapters/a0.gguf"),
        bench_dir().join("llama_cpp/node_modules/node-llama-cpp"),
    ];
    if let Some(missing) = need.iter().find(|p| !p.exists()) {
        eprintln!(
            "{} is missing: `bash benches/llama_cpp/run.sh` prepares the files and runs this bench",
            missing.display()
        );
        std::process::exit(2);
    }
    let gguf = GgufFile::open(&dir.join("smollm2-f32.gguf")).expect("open the f32 model");
    let tokenizer = gguf.tokenizer().expect("tokenizer");
    drop(gguf);
    let encode = |text: &str| tokenizer.encode(text, true).expect("encode");
    let long = encode(&chat(LONG));
    let prompts: Vec<Vec<u32>> = QUESTIONS.iter().map(|q| encode(&chat(q))).collect();
    let adapters_gguf: Vec<String> = (0..ADAPTERS)
        .map(|i| {
            dir.join(format!("adapters/a{i}.gguf"))
                .display()
                .to_string()
        })
        .collect();
    let adapters_peft: Vec<String> = (0..ADAPTERS)
        .map(|i| dir.join(format!("adapters/a{i}")).display().to_string())
        .collect();
    println!(
        "prompts: one of {} tokens, 32 of {}..{} tokens; {NEW_TOKENS} new tokens each",
        long.len(),
        prompts.iter().map(Vec::len).min().unwrap(),
        prompts.iter().map(Vec::len).max().unwrap()
    );
    let mut report = Report::new("llama_cpp");
    let raw = RefCell::new(BTreeMap::new());
    // (label, our format, our file, llama.cpp's file)
    let pairs = [
        ("f32", "f32", "f32", "f32"),
        ("f16", "stored", "f16", "f16"),
        ("bf16", "stored", "bf16", "bf16"),
        ("int8", "int8-g32", "q8_0", "q8_0"),
        ("q4_1", "stored", "q4_1", "q4_1"),
    ];
    let mut bars: Vec<(String, f64, f64)> = Vec::new();
    for (label, format, ours_file, theirs_file) in pairs {
        let model = |f: &str| dir.join(format!("smollm2-{f}.gguf")).display().to_string();
        let spec = |engine: &str, case: &str| {
            let file = if engine == "ours" {
                ours_file
            } else {
                theirs_file
            };
            json!({"model": model(file), "format": format, "threads": THREADS,
                "new_tokens": NEW_TOKENS, "case": case, "reps": REPS})
        };
        let pair = |case: &str, spec_of: &dyn Fn(&str) -> Value| {
            let o = run_case("ours", &spec_of("ours"), &dir);
            let l = run_case("llama.cpp", &spec_of("llama.cpp"), &dir);
            (case.to_owned(), o, l)
        };
        let keep = |(case, o, l): (String, Option<Value>, Option<Value>)| {
            raw.borrow_mut().insert(
                format!("{label}_{case}"),
                json!({"ours": o.clone(), "llama_cpp": l.clone()}),
            );
            (o, l)
        };
        let (o, l) = keep(pair("single", &|e| {
            let mut s = spec(e, "single");
            s["prompts"] = json!([long]);
            s
        }));
        let (Some(o), Some(l)) = (o, l) else { continue };
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        for (who, v) in [("ours", &o), ("llama_cpp", &l)] {
            for k in [
                "decode_tokens_per_s",
                "prompt_tokens_per_s",
                "peak_rss_bytes",
                "load_s",
            ] {
                report.figure(&format!("{label}_{who}_{k}"), f(v, k));
            }
        }
        report.ratio(
            &format!("{label}_decode_vs_llama_cpp"),
            f(&o, "decode_tokens_per_s"),
            f(&l, "decode_tokens_per_s"),
            "≥ 1.0",
        );
        report.ratio(
            &format!("{label}_prompt_vs_llama_cpp"),
            f(&o, "prompt_tokens_per_s"),
            f(&l, "prompt_tokens_per_s"),
            "—",
        );
        report.ratio(
            &format!("{label}_peak_memory_vs_llama_cpp"),
            f(&o, "peak_rss_bytes"),
            f(&l, "peak_rss_bytes"),
            "≤ 1.0",
        );
        report.figure(
            &format!("{label}_greedy_tokens_agreeing"),
            agree(&o["tokens"], &l["tokens"]) as f64,
        );
        // Each engine's tokens against its own f32 ones: where its precision parts from f32.
        if let Some(base) = raw.borrow().get("f32_single") {
            for (who, v) in [("ours", &o), ("llama_cpp", &l)] {
                report.figure(
                    &format!("{label}_{who}_tokens_agreeing_with_its_f32"),
                    agree(&v["tokens"], &base[who]["tokens"]) as f64,
                );
            }
        }
        bars.push((
            format!("{label} 1 stream"),
            f(&o, "decode_tokens_per_s"),
            f(&l, "decode_tokens_per_s"),
        ));
        let (o, l) = keep(pair("batch", &|e| {
            let mut s = spec(e, "batch");
            s["prompts"] = json!(prompts);
            s
        }));
        if let (Some(o), Some(l)) = (o, l) {
            // llama.cpp's generation ends a sequence at an end-of-generation token; ours runs
            // every request to 128 tokens.
            for (who, v) in [("ours", &o), ("llama_cpp", &l)] {
                report.figure(
                    &format!("{label}_{who}_batch32_tokens_generated"),
                    f(v, "tokens_generated"),
                );
            }
            report.figure(
                &format!("{label}_ours_batch32_tokens_per_s"),
                f(&o, "aggregate_tokens_per_s"),
            );
            report.figure(
                &format!("{label}_llama_cpp_batch32_tokens_per_s"),
                f(&l, "aggregate_tokens_per_s"),
            );
            report.ratio(
                &format!("{label}_batch32_vs_llama_cpp"),
                f(&o, "aggregate_tokens_per_s"),
                f(&l, "aggregate_tokens_per_s"),
                "—",
            );
            bars.push((
                format!("{label} 32 requests"),
                f(&o, "aggregate_tokens_per_s"),
                f(&l, "aggregate_tokens_per_s"),
            ));
        }
        let o = run_case(
            "ours",
            &{
                let mut s = spec("ours", "adapters");
                s["prompts"] = json!(prompts);
                s["adapters"] = json!(adapters_peft);
                s
            },
            &dir,
        );
        let mut best = f64::NAN;
        for strategy in ["contexts", "sequential"] {
            let mut s = spec("llama.cpp", "adapters");
            s["prompts"] = json!(prompts);
            s["adapters"] = json!(adapters_gguf);
            s["strategy"] = json!(strategy);
            if let Some(l) = run_case("llama.cpp", &s, &dir) {
                let v = f(&l, "aggregate_tokens_per_s");
                report.figure(
                    &format!("{label}_llama_cpp_adapters32_{strategy}_tokens_per_s"),
                    v,
                );
                best = best.max(v);
                raw.borrow_mut()
                    .insert(format!("{label}_adapters_llama_cpp_{strategy}"), l);
            }
        }
        if let Some(o) = o {
            report.figure(
                &format!("{label}_ours_adapters32_tokens_per_s"),
                f(&o, "aggregate_tokens_per_s"),
            );
            report.ratio(
                &format!("{label}_adapters32_vs_llama_cpp"),
                f(&o, "aggregate_tokens_per_s"),
                best,
                "≥ 3",
            );
            bars.push((
                format!("{label} 32 adapters"),
                f(&o, "aggregate_tokens_per_s"),
                best,
            ));
            raw.borrow_mut().insert(format!("{label}_adapters_ours"), o);
        }
        if label == "f32" {
            let (o, l) = keep(pair("adapter_single", &|e| {
                let mut s = spec(e, "single");
                s["prompts"] = json!([long]);
                s["adapter"] = json!(if e == "ours" {
                    &adapters_peft[0]
                } else {
                    &adapters_gguf[0]
                });
                s
            }));
            if let (Some(o), Some(l), Some(base)) = (o, l, raw.borrow().get("f32_single").cloned())
            {
                report.figure(
                    "f32_adapter_greedy_tokens_agreeing",
                    agree(&o["tokens"], &l["tokens"]) as f64,
                );
                report.figure(
                    "f32_adapter_changes_greedy_after",
                    agree(&o["tokens"], &base["ours"]["tokens"]) as f64,
                );
            }
        }
    }
    match report.save() {
        Ok(p) => {
            let raw_path = p.with_file_name("llama_cpp_runs.json");
            std::fs::write(&raw_path, serde_json::to_string(&*raw.borrow()).unwrap()).ok();
            let png = p.with_extension("png");
            match draw(&png, &bars) {
                Ok(()) => println!(
                    "saved {}, {} and {}",
                    p.display(),
                    raw_path.display(),
                    png.display()
                ),
                Err(e) => eprintln!("could not draw {}: {e}", png.display()),
            }
        }
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}

/// Grouped bars: tokens/s of ours (blue) and llama.cpp (red) per pair and case.
fn draw(path: &Path, bars: &[(String, f64, f64)]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = bars.iter().map(|b| b.1.max(b.2)).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "SmolLM2-135M on 2 cores: ours (blue) and llama.cpp (red), tokens/s",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(60)
        .build_cartesian_2d((0usize..bars.len()).into_segmented(), 0f64..ymax)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .y_desc("tokens/s")
        .draw()?;
    // Each bar pair shares a slot of the plot's width (about 1,320 pixels).
    let slot = 1320 / (bars.len() + 1) as u32;
    for (side, color) in [(0usize, BLUE.mix(0.7)), (1, RED.mix(0.6))] {
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let v = if side == 0 { b.1 } else { b.2 };
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                color.filled(),
            );
            // Ours on the left half of the slot, llama.cpp's on the right.
            let (l, r) = if side == 0 {
                (slot / 10, slot / 2 + 1)
            } else {
                (slot / 2 + 1, slot / 10)
            };
            bar.set_margin(0, 0, l, r);
            bar
        }))?;
    }
    root.present()?;
    Ok(())
}
