//! A compiled kernel program, as the CUDA driver loads it.

/// A compiled kernel program: machine code for one GPU architecture, or PTX the driver compiles
/// when it loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// Machine code (an ELF cubin) for one real architecture (`sm_XY`).
    Cubin(Vec<u8>),
    /// PTX text for a virtual architecture (`compute_XY`).
    Ptx(String),
}

impl Image {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Image::Cubin(b) => b.len(),
            Image::Ptx(s) => s.len(),
        }
    }

    /// Whether the image is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a cubin (an ELF image).
    pub fn is_cubin(&self) -> bool {
        matches!(self, Image::Cubin(b) if b.starts_with(b"\x7fELF"))
    }

    /// Whether the image defines the kernel `name` (a cubin holds it in its string table, PTX
    /// as `.entry name(`).
    pub fn defines(&self, name: &str) -> bool {
        match self {
            Image::Cubin(b) => {
                let needle = format!("\0{name}\0");
                b.windows(needle.len()).any(|w| w == needle.as_bytes())
            }
            Image::Ptx(s) => s.contains(&format!(".entry {name}(")),
        }
    }
}
