//! Where checkpoint files come from: a folder on disk, bytes in memory, or (in the browser) Blobs.
//!
//! A model folder may come from anywhere, so every name is checked before it is used: names come
//! from model.safetensors.index.json, and a hostile index must not make the runtime read outside
//! the folder. A name is a plain file name (no separators, no `..`, not absolute); on disk the file
//! must be a regular file whose real path lies inside the folder. JSON files are read whole, so
//! their size is checked against a cap before anything is read.

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::HashMap;

/// Largest JSON file read whole (config.json, generation_config.json, the shard index,
/// tokenizer_config.json).
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Largest tokenizer.json (Llama 3's is 9 MB; multilingual vocabularies reach a few tens).
pub const MAX_TOKENIZER_BYTES: u64 = 128 << 20;

/// Checkpoint files by name. Reads are async so the browser can fetch them.
#[allow(async_fn_in_trait)]
pub trait Files {
    /// Size of a file in bytes, or `None` when there is no such file.
    async fn size(&self, name: &str) -> Result<Option<u64>>;
    /// `len` bytes of a file from `start`.
    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>>;

    /// A whole small file, or `None` when there is no such file; refused past `cap` bytes
    /// before anything is read.
    async fn read_capped(&self, name: &str, cap: u64) -> Result<Option<Cow<'_, [u8]>>> {
        check_name(name)?;
        let Some(size) = self.size(name).await? else {
            return Ok(None);
        };
        if size > cap {
            return Err(Error::file(
                name,
                format!("{size} bytes is more than the {cap} bytes allowed for this file"),
            ));
        }
        let len = usize::try_from(size).map_err(|_| Error::file(name, "too large"))?;
        self.read_range(name, 0, len).await.map(Some)
    }

    /// The GGUF file to load: the file a path named, or else, where there is no config.json,
    /// the one `*.gguf` file among the files.
    fn gguf(&self) -> Option<String> {
        None
    }

    /// Like [`Files::size`], but a missing file is an error.
    async fn size_of(&self, name: &str) -> Result<u64> {
        self.size(name)
            .await?
            .ok_or_else(|| Error::file(name, "no such file"))
    }
}

/// Checks that `name` is a plain file name inside the model folder: not empty, no path
/// separators, not `.` or `..`, no drive letters or NUL bytes, at most 255 bytes.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::file(
            name,
            format!("not a plain file name inside the model folder ({why})"),
        ))
    };
    if name.is_empty() || name.len() > 255 {
        return bad("empty or longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("a directory reference");
    }
    if name.contains(['/', '\\', ':', '\0']) {
        return bad("path separators, drive letters and NUL are not allowed");
    }
    if name.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    Ok(())
}

/// The name among `names` ending in `.gguf`, when there is exactly one and no config.json (a
/// Hugging Face folder that also holds a GGUF file loads as the folder).
pub fn only_gguf<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    let names: Vec<&str> = names.collect();
    if names.contains(&"config.json") {
        return None;
    }
    let mut found = names
        .into_iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"));
    match (found.next(), found.next()) {
        (Some(name), None) => Some(name.to_string()),
        _ => None,
    }
}

/// Files held in memory (the embedded default model, or buffers handed over by JavaScript).
#[derive(Default)]
pub struct MemoryFiles(pub HashMap<String, Cow<'static, [u8]>>);

impl MemoryFiles {
    fn get(&self, name: &str) -> Result<&[u8]> {
        self.0
            .get(name)
            .map(|b| b.as_ref())
            .ok_or_else(|| Error::file(name, "no such file"))
    }
}

/// `bytes[start..start + len]`, or an error naming the file when the range is not inside it.
pub fn slice<'a>(name: &str, bytes: &'a [u8], start: u64, len: usize) -> Result<&'a [u8]> {
    let end = start.checked_add(len as u64);
    usize::try_from(start)
        .ok()
        .zip(end.and_then(|e| usize::try_from(e).ok()))
        .and_then(|(s, e)| bytes.get(s..e))
        .ok_or_else(|| {
            Error::file(
                name,
                format!(
                    "truncated: needs bytes {start}..{} but has {}",
                    end.map_or("past 2^64".into(), |e| e.to_string()),
                    bytes.len()
                ),
            )
        })
}

impl Files for MemoryFiles {
    async fn size(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.0.get(name).map(|b| b.len() as u64))
    }
    fn gguf(&self) -> Option<String> {
        only_gguf(self.0.keys().map(String::as_str))
    }
    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        slice(name, self.get(name)?, start, len).map(Cow::Borrowed)
    }
}

/// A checkpoint folder on disk, confined: only regular files whose real path lies inside the
/// folder are read. In a Hugging Face hub cache (`models--org--name/snapshots/<rev>/`, where each
/// file is a symbolic link to `../../blobs/<hash>`) the confinement is the repository's cache
/// folder `models--org--name/`, so cached downloads load as they are.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirFiles {
    dir: std::path::PathBuf,
    /// Real paths must start with this.
    root: std::path::PathBuf,
    /// The GGUF file named by the path, or the folder's only one.
    gguf: Option<String>,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirFiles {
    /// Opens a model folder, or a `.gguf` file (confined to its folder), failing with a clear
    /// message when it is missing or neither.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Result<Self> {
        let path: std::path::PathBuf = path.into();
        let shown = path.display().to_string();
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::file(
                &shown,
                "no such model folder or file (expected a directory or a .gguf file)",
            ),
            _ => Error::file(&shown, e),
        })?;
        let file_name = path.file_name().and_then(|n| n.to_str());
        let (dir, gguf) = match (meta.is_dir(), file_name) {
            (true, _) => (path.clone(), None),
            (false, Some(name)) if name.to_ascii_lowercase().ends_with(".gguf") => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                let dir = parent.unwrap_or(std::path::Path::new(".")).to_path_buf();
                (dir, Some(name.to_string()))
            }
            _ => {
                return Err(Error::file(
                    &shown,
                    "is a file; --model takes a .gguf file or the folder that holds config.json, tokenizer.json and the safetensors files",
                ))
            }
        };
        let real = std::fs::canonicalize(&dir).map_err(|e| Error::file(&shown, e))?;
        let root = hub_cache_repo(&real).unwrap_or_else(|| real.clone());
        let gguf = gguf.or_else(|| {
            let entries = std::fs::read_dir(&real).ok()?;
            let names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            only_gguf(names.iter().map(String::as_str))
        });
        Ok(Self {
            dir: real,
            root,
            gguf,
        })
    }

    /// The real path of a file inside the folder, checked to be a regular file that does not
    /// lead outside it; `None` when there is no such file.
    fn resolve(&self, name: &str) -> Result<Option<std::path::PathBuf>> {
        check_name(name)?;
        let path = self.dir.join(name);
        let shown = path.display().to_string();
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::file(shown, e)),
            Ok(_) => {}
        }
        let real = match std::fs::canonicalize(&path) {
            Ok(real) => real,
            // A dangling symbolic link.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::file(
                    shown,
                    "a symbolic link to a file that does not exist",
                ))
            }
            Err(e) => return Err(Error::file(shown, e)),
        };
        if !real.starts_with(&self.root) {
            return Err(Error::file(
                shown,
                "a symbolic link that leads outside the model folder; refusing to read it",
            ));
        }
        // Checked on the resolved file without opening it: opening a FIFO or a device would
        // block or read forever.
        let meta = std::fs::metadata(&real).map_err(|e| Error::file(&shown, e))?;
        if !meta.is_file() {
            return Err(Error::file(shown, "not a regular file"));
        }
        Ok(Some(real))
    }

    fn require(&self, name: &str) -> Result<std::path::PathBuf> {
        self.resolve(name)?
            .ok_or_else(|| Error::file(self.dir.join(name).display().to_string(), "no such file"))
    }
}

/// `.../models--org--name` when `dir` is `.../models--org--name/snapshots/<revision>`.
#[cfg(not(target_arch = "wasm32"))]
fn hub_cache_repo(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let snapshots = dir.parent()?;
    let repo = snapshots.parent()?;
    let is_repo = repo.file_name()?.to_str()?.starts_with("models--");
    (snapshots.file_name()? == "snapshots" && is_repo).then(|| repo.to_path_buf())
}

#[cfg(not(target_arch = "wasm32"))]
impl Files for DirFiles {
    fn gguf(&self) -> Option<String> {
        self.gguf.clone()
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        let Some(real) = self.resolve(name)? else {
            return Ok(None);
        };
        let meta = std::fs::metadata(&real)
            .map_err(|e| Error::file(self.dir.join(name).display().to_string(), e))?;
        Ok(Some(meta.len()))
    }

    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        use std::io::{Read, Seek, SeekFrom};
        let real = self.require(name)?;
        let shown = self.dir.join(name).display().to_string();
        let err = |e: std::io::Error| Error::file(&shown, e);
        let mut file = std::fs::File::open(&real).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let end = start.checked_add(len as u64).filter(|&e| e <= size);
        let Some(end) = end else {
            return Err(Error::file(
                &shown,
                format!("truncated: needs {len} bytes from {start} but has {size}"),
            ));
        };
        file.seek(SeekFrom::Start(start)).map_err(err)?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf)
            .map_err(|e| Error::file(&shown, format!("cannot read bytes {start}..{end} ({e})")))?;
        Ok(Cow::Owned(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_only() {
        for ok in [
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "config.json",
            "a..b",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "C:x",
            "a\0b",
            "a\nb",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn the_one_gguf_file_of_a_folder_without_config_json() {
        assert_eq!(
            only_gguf(["a.gguf", "x.txt"].into_iter()),
            Some("a.gguf".into())
        );
        assert_eq!(only_gguf(["A.GGUF"].into_iter()), Some("A.GGUF".into()));
        assert_eq!(
            only_gguf(["a.gguf", "b.gguf"].into_iter()),
            None,
            "which one?"
        );
        assert_eq!(only_gguf(["a.gguf", "config.json"].into_iter()), None);
        assert_eq!(only_gguf(["config.json"].into_iter()), None);
    }

    #[test]
    fn slices_never_overflow() {
        let bytes = [1u8, 2, 3];
        assert_eq!(slice("f", &bytes, 1, 2).unwrap(), &[2, 3]);
        assert!(slice("f", &bytes, 2, 2)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(slice("f", &bytes, u64::MAX, 2).is_err());
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn hub_cache_layout_widens_the_root() {
        let p = std::path::Path::new("/c/hub/models--facebook--x/snapshots/abc");
        assert_eq!(
            hub_cache_repo(p).unwrap(),
            std::path::Path::new("/c/hub/models--facebook--x")
        );
        assert!(hub_cache_repo(std::path::Path::new("/c/snapshots/abc")).is_none());
        assert!(hub_cache_repo(std::path::Path::new("/models/x")).is_none());
    }
}
