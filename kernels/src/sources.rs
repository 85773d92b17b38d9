//! The CUDA C sources of the kernels, embedded in the library. Each compiled program is
//! [`COMMON`] followed by one source, so NVRTC needs no include path and no CUDA header.

/// Element types, `half`/`bfloat16` conversions (PTX `cvt` and bit manipulation), 16-byte
/// vector loads and stores, the warp reduction and the layout of the slot and tile tables,
/// shared by every kernel.
pub const COMMON: &str = include_str!("common.cuh");

/// `(file name, source)` of every kernel program.
pub const SOURCES: &[(&str, &str)] = &[
    ("shrink.cu", include_str!("shrink.cu")),
    ("expand.cu", include_str!("expand.cu")),
    ("layers.cu", include_str!("layers.cu")),
    ("rope_kv.cu", include_str!("rope_kv.cu")),
    ("attention.cu", include_str!("attention.cu")),
    ("prefill.cu", include_str!("prefill.cu")),
    ("sample.cu", include_str!("sample.cu")),
];

/// The dtypes the kernels are instantiated for, as suffixes of the entry point names.
pub const DTYPES: &[&str] = &["f32", "f16", "bf16"];

/// The 16-bit dtypes, the only ones of the tensor-core kernels (`prefill.cu`).
pub const HALF_DTYPES: &[&str] = &["f16", "bf16"];

/// The dtypes the entry points of program `file` are instantiated for.
pub fn dtypes(file: &str) -> &'static [&'static str] {
    match file {
        "prefill.cu" => HALF_DTYPES,
        _ => DTYPES,
    }
}

/// The `extern "C"` entry points each program defines (before the dtype suffix).
pub fn entry_points(file: &str) -> &'static [&'static str] {
    match file {
        "shrink.cu" => &["sgmv_shrink", "bgmv_shrink"],
        "expand.cu" => &["sgmv_expand", "bgmv_expand", "lora_epilogue", "dora_norm"],
        "layers.cu" => &["embed", "rms_norm", "gated"],
        "rope_kv.cu" => &["rope_kv"],
        "attention.cu" => &["attention", "attention_reduce"],
        "prefill.cu" => &["prefill_attention"],
        "sample.cu" => &["sample"],
        _ => &[],
    }
}

/// The full program text NVRTC compiles for `file` (common part first), or `None` when there is
/// no such source.
pub fn program(file: &str) -> Option<String> {
    SOURCES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, src)| format!("{COMMON}\n{src}"))
}

/// Every entry point name (`sgmv_shrink_bf16`, ...) across all programs.
pub fn all_kernel_names() -> Vec<String> {
    SOURCES
        .iter()
        .flat_map(|(file, _)| {
            entry_points(file)
                .iter()
                .flat_map(move |e| dtypes(file).iter().map(move |d| format!("{e}_{d}")))
        })
        .collect()
}
