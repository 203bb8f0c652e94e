//! Checkpoint files as browser Blobs (fetched and cached by loader.js, or picked by the user).
//! Tensors are read by byte range with `Blob.slice`, so only the tensor being uploaded is ever in
//! wasm memory.

use crate::checkpoint::Files;
use crate::error::{Error, Result};
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

    async fn bytes(name: &str, blob: &Blob) -> Result<Vec<u8>> {
        let buffer = JsFuture::from(blob.array_buffer())
            .await
            .map_err(|e| js_error(name, e))?;
        Ok(js_sys::Uint8Array::new(&buffer).to_vec())
    }
}

impl Files for BlobFiles {
    async fn read(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>> {
        match self.blob(name) {
            Some(blob) => Ok(Some(Cow::Owned(Self::bytes(name, &blob).await?))),
            None => Ok(None),
        }
    }

    async fn size(&self, name: &str) -> Result<u64> {
        let blob = self
            .blob(name)
            .ok_or_else(|| Error::file(name, "no such file"))?;
        Ok(blob.size() as u64)
    }

    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let blob = self
            .blob(name)
            .ok_or_else(|| Error::file(name, "no such file"))?;
        let end = start + len as u64;
        if end > blob.size() as u64 {
            return Err(Error::file(
                name,
                format!(
                    "truncated: needs bytes {start}..{end} but has {}",
                    blob.size()
                ),
            ));
        }
        let slice = blob
            .slice_with_f64_and_f64(start as f64, end as f64)
            .map_err(|e| js_error(name, e))?;
        Ok(Cow::Owned(Self::bytes(name, &slice).await?))
    }
}
