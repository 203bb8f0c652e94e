//! Memory planning: what a model will take, computed with checked arithmetic before anything is
//! allocated, and refused with one message that names the sizes when it cannot fit.

use crate::error::{Error, Result};

/// Bytes of memory this process can still take, where the platform says (Linux: MemAvailable).
pub fn available_host_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Adds up named parts, failing instead of overflowing.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    pub parts: Vec<(&'static str, u64)>,
}

impl Budget {
    /// Adds `count` items of `size` bytes (any product that overflows is an error).
    pub fn add(&mut self, what: &'static str, factors: &[u64]) -> Result<()> {
        let bytes = factors
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b))
            .ok_or_else(|| Error::Invalid(format!("the size of the {what} overflows")))?;
        self.parts.push((what, bytes));
        Ok(())
    }

    pub fn total(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |a, &(_, b)| a.saturating_add(b))
    }

    /// "weights 1.2 GB + KV cache 64 MB"
    pub fn describe(&self) -> String {
        self.parts
            .iter()
            .map(|(what, b)| format!("{what} {}", human(*b)))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Fails when the total exceeds what the host has available (when that is known).
    pub fn check_host(&self, hint: &str) -> Result<()> {
        match available_host_memory() {
            Some(available) if self.total() > available => Err(Error::OutOfMemory {
                needed: self.total(),
                available,
                detail: format!("{}; {hint}", self.describe()),
            }),
            _ => Ok(()),
        }
    }
}

/// Bytes in decimal units, as download sizes are usually quoted.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}
