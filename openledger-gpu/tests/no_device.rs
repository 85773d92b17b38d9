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
