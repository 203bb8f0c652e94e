//! Checkpoint files as browser Blobs (fetched and cached by loader.js, or picked by the user).
//! Tensors are read by byte range with `Blob.slice`, so only the bytes being uploaded are ever in
//! wasm memory.

use crate::error::{Error, Result};
use crate::files::Files;
use std::borrow::Cow;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::Blob;

pub struct BlobFiles(pub js_sys::Map);

fn js_error(file: &str, e: JsValue) -> Error {
    Error::file(file, e.as_string().unwrap_or_else(|| format!("{e:?}")))
}

impl BlobFiles {
    fn blob(&self, name: &str) -> Option<Blob> {
        self.0.get(&JsValue::from_str(name)).dyn_into::<Blob>().ok()
    }
}

impl Files for BlobFiles {
    fn gguf(&self) -> Option<String> {
        let names: Vec<String> = self
            .0
            .keys()
            .into_iter()
            .filter_map(|k| k.ok()?.as_string())
            .collect();
        crate::files::only_gguf(names.iter().map(String::as_str))
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.blob(name).map(|b| b.size() as u64))
    }

    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let blob = self
            .blob(name)
            .ok_or_else(|| Error::file(name, "no such file"))?;
        let size = blob.size() as u64;
        let end = start.checked_add(len as u64).filter(|&e| e <= size);
        let Some(end) = end else {
            return Err(Error::file(
                name,
                format!("truncated: needs {len} bytes from {start} but has {size}"),
            ));
        };
        let slice = blob
            .slice_with_f64_and_f64(start as f64, end as f64)
            .map_err(|e| js_error(name, e))?;
        let buffer = JsFuture::from(slice.array_buffer())
            .await
            .map_err(|e| js_error(name, e))?;
        Ok(Cow::Owned(js_sys::Uint8Array::new(&buffer).to_vec()))
    }
}
