//! NVRTC compilation of every kernel source (needs libnvrtc, no GPU): a cubin for each real
//! architecture, PTX for each virtual one, every entry point in every dtype present, with line
//! info. The kernels' results on a GPU are checked by `openledger-sgmv`'s backend tests.
//!
//! Set `OPENLEDGER_REQUIRE_NVRTC=1` (CI does, after installing NVRTC) to make a missing NVRTC a
//! failure rather than a skip.

#[cfg(not(feature = "cuda"))]
#[test]
fn without_the_cuda_feature_compilation_answers_not_compiled_with_cuda() {
    use openledger_kernels::KernelError;
    assert!(matches!(
        openledger_kernels::compile_all_kernels("sm_90"),
        Err(KernelError::NotCompiledWithCuda)
    ));
    assert!(!openledger_kernels::nvrtc_available());
}

#[cfg(feature = "cuda")]
mod nvrtc {
    use openledger_kernels::{Image, KernelError, entry_points, programs, sources};

    fn required() -> bool {
        std::env::var("OPENLEDGER_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
    }

    /// `None` (after checking the error names what it looked for) where NVRTC is absent and
    /// not required.
    fn compiled(arch: &str) -> Option<openledger_kernels::ProgramSet> {
        match programs(arch) {
            Ok(set) => Some(set),
            Err(KernelError::NoNvrtc { searched }) if !required() => {
                eprintln!(
                    "libnvrtc not found (looked for {searched:?}): compilation not exercised"
                );
                assert!(searched.iter().any(|n| n.contains("nvrtc")));
                assert!(!openledger_kernels::nvrtc_available());
                None
            }
            Err(e) => panic!("{arch}: {e}"),
        }
    }

    #[test]
    fn nvrtc_compiles_cubins_for_ampere_and_hopper_and_ptx_for_virtual_archs() {
        for arch in ["sm_80", "sm_90", "compute_80", "compute_90"] {
            let Some(set) = compiled(arch) else { return };
            let files: Vec<&str> = set.iter().map(|(f, _)| *f).collect();
            let want: Vec<&str> = sources::SOURCES.iter().map(|(f, _)| *f).collect();
            assert_eq!(files, want, "{arch}");
            for (file, image) in set.iter() {
                assert!(
                    image.len() > 1000,
                    "{arch} {file}: only {} bytes",
                    image.len()
                );
                let real = arch.starts_with("sm_");
                assert_eq!(
                    image.is_cubin(),
                    real,
                    "{arch} {file}: a cubin for sm_, PTX else"
                );
                for entry in entry_points(file) {
                    for d in sources::dtypes(file) {
                        let name = format!("{entry}_{d}");
                        assert!(image.defines(&name), "{arch} {file}: no {name}");
                    }
                }
                assert!(!image.defines("no_such_kernel_f32"));
                if let Image::Ptx(text) = image {
                    // Compiled with -lineinfo: the PTX carries source locations.
                    assert!(text.contains(".loc"), "{arch} {file}: no line info");
                }
            }
            println!(
                "{arch}: {:?}",
                set.iter().map(|(f, i)| (f, i.len())).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn programs_are_compiled_once_per_architecture() {
        let (Some(a), Some(b)) = (compiled("sm_90"), compiled("sm_90")) else {
            return;
        };
        assert!(std::sync::Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn an_unknown_architecture_is_a_typed_error() {
        for arch in ["ampere", "sm_", "compute_9x", "sm90"] {
            match programs(arch) {
                Err(KernelError::BadArch { arch: a }) => assert_eq!(a, arch),
                other => panic!("{arch}: expected BadArch, got {other:?}"),
            }
        }
    }
}
