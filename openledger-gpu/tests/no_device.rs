//! Opening the CUDA runtime never panics: on a machine with a GPU (and a `cuda` build) it
//! opens device 0; elsewhere it is a typed error naming what is missing — the build without
//! the feature, the driver library, NVRTC, cuBLAS or the device.

use openledger_gpu::GpuError;

#[test]
fn opening_cuda_gives_a_device_or_names_what_is_missing() {
    match openledger_gpu::cuda_runtime(0) {
        Ok(rt) => assert!(!rt.device_name().is_empty()),
        Err(GpuError::NotCompiledWithCuda) if !cfg!(feature = "cuda") => {}
        Err(GpuError::MissingLibrary { library, searched }) => {
            assert!(["cuda", "nvrtc", "cublas"].contains(&library));
            assert!(!searched.is_empty(), "{library}: the names looked for");
        }
        Err(e @ GpuError::NoDevice { .. }) => assert!(e.to_string().contains("device 0")),
        Err(e) => panic!("unexpected: {e}"),
    }
}

/// Serving on a CUDA device by name: a typed [`ServedError::Device`] naming the device and what
/// is missing where it cannot run, never a panic; on a machine with a GPU (and a `cuda` build)
/// the fixture is served and answers.
#[test]
fn serving_on_cuda_serves_or_names_what_is_missing() {
    use openledger_core::error::{Classify, ErrorKind};
    use openledger_gpu::Device;
    use openledger_lora::model::{ServeOptions, ServedError, WeightFormat};
    use openledger_lora::serve::{Event, Request, SamplingParams};
    // The fixtures from `OPENLEDGER_FIXTURES` where set (a test binary carried to a GPU
    // machine), else from the repository.
    let dir = std::env::var_os("OPENLEDGER_FIXTURES")
        .map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures"),
            std::path::PathBuf::from,
        )
        .join("peft/tiny-llama");
    let options = ServeOptions {
        weights: WeightFormat::Stored,
        ..ServeOptions::default()
    };
    match openledger_gpu::serve(&dir, Device::Cuda(0), None, &options, &mut |_| {}) {
        Ok(served) => {
            let sampling = SamplingParams {
                max_new_tokens: 3,
                ..Default::default()
            };
            let h = served
                .submit(Request {
                    prompt: vec![1, 17, 42],
                    adapter: None,
                    sampling,
                })
                .unwrap();
            let n = h.filter(|e| matches!(e, Event::Token { .. })).count();
            assert_eq!(n, 3);
        }
        Err(e @ ServedError::Device { .. }) => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            let text = e.to_string();
            assert!(text.starts_with("device cuda:0: "), "{text}");
            if cfg!(feature = "cuda") {
                assert!(
                    text.contains("cannot be loaded") || text.contains("cannot be opened"),
                    "{text}"
                );
            } else {
                assert!(text.contains("`cuda` feature"), "{text}");
            }
        }
        Err(e) => panic!("unexpected: {e}"),
    }
    // Int8 weights are the CPU's alone, whatever the machine.
    let int8 = ServeOptions {
        weights: WeightFormat::Int8 { group: 0 },
        ..ServeOptions::default()
    };
    let e = openledger_gpu::serve(&dir, Device::Cuda(0), None, &int8, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("int8 weights"), "{e}");
    // A GGUF file: the device is opened before the file is read, so a machine without one
    // names the device; with one, the missing file is named.
    let missing = dir.join("no-such-model.gguf");
    match openledger_gpu::serve_gguf(
        &missing,
        Device::Cuda(0),
        None,
        &ServeOptions::default(),
        &mut |_| {},
    ) {
        Ok(_) => panic!("a missing file served"),
        Err(e @ ServedError::Device { .. }) => {
            assert!(e.to_string().starts_with("device cuda:0: "), "{e}");
        }
        Err(e) => assert!(e.to_string().contains("no-such-model.gguf"), "{e}"),
    }
    // The CPU device is the CPU engine.
    let cpu = openledger_gpu::serve(
        &dir,
        Device::Cpu,
        None,
        &ServeOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(cpu.vocab_size(), 320);
}
