//! PEFT LoRA adapters for the openledger SDK: loading (folder or bytes), validation against a
//! base model, merging, weighted combination, the just-in-time adapter pool, and the SGMV/BGMV
//! multi-LoRA operators.

pub mod adapter;
pub mod base;
pub mod build;
pub mod combine;
pub mod config;
pub mod error;
pub mod merge;
pub mod model;
pub mod pool;
pub mod serve;
pub mod sgmv;
pub mod tensors;
pub mod train;
