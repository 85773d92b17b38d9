//! Feature unification for the binding crates: this crate has no code. Its dependency list pins
//! the features that the workspace-wide build enables, so building one binding crate on its own
//! (`maturin`, `napi build`, `cargo build -p openledger-mobile`) reuses the artifacts of
//! `cargo test --workspace` rather than compiling half the dependency graph a second time.
