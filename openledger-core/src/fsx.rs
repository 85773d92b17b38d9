//! Reading the files a caller names: only regular files are opened, their size known before a
//! byte is read. A symlink to a device (`/dev/zero` grows without end) or a FIFO (opening one
//! waits for a writer) is refused from its metadata, before it is opened.
//!
//! ```
//! use openledger_core::fsx::read_regular;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("config.json");
//! std::fs::write(&path, b"{}").unwrap();
//! assert_eq!(read_regular(&path, 1 << 20).unwrap(), b"{}");
//! assert!(read_regular(&path, 1).is_err()); // larger than allowed
//! assert!(read_regular(dir.path(), 1 << 20).is_err()); // a directory
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Opens `path` if it is (or links to) a regular file, and returns it with its size; a
/// directory, device, FIFO or socket is an `io::Error` saying what it is.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory, not a file",
        ));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file (a device, FIFO or socket)",
        ));
    }
    let file = File::open(path)?;
    // The path may have been swapped between the two calls: check what was opened.
    let opened = file.metadata()?;
    if !opened.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file (a device, FIFO or socket)",
        ));
    }
    Ok((file, opened.len()))
}

/// Reads the regular file `path` whole, refusing one of more than `limit` bytes (before reading,
/// and again while reading should it grow).
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is {len} bytes, more than the {limit} allowed"),
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("grew past the {limit} bytes allowed while it was read"),
        ));
    }
    Ok(out)
}

/// The most bytes a JSON config file (`config.json`, `adapter_config.json`, an index) may have.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The most bytes a training log file may have.
pub const MAX_LOG_BYTES: u64 = 4 << 30;
/// The most bytes a JSONL file of datanet records read whole may have.
pub const MAX_JSONL_BYTES: u64 = 4 << 30;
/// The most bytes a `tokenizer.json` may have.
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;
