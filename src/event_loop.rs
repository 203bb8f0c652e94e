//! A turn of the browser's event loop. The CPU backend computes a forward pass without awaiting
//! anything, so a request on it would hold its thread (a tab's, or a worker's) to the end: an
//! AbortSignal's abort, the demo's Stop message or the painting of streamed text could only come
//! afterwards. WebGPU needs none of this: each pass already awaits the GPU's results.

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

// A message to oneself rather than setTimeout(0), which browsers clamp to 4 ms once nested:
// that would cost more than a small model's whole token.
#[wasm_bindgen(inline_js = r#"
export function nextTask() {
  if (typeof MessageChannel !== 'function') return new Promise((resolve) => setTimeout(resolve, 0));
  return new Promise((resolve) => {
    const { port1, port2 } = new MessageChannel();
    port1.onmessage = () => { port1.close(); resolve(); };
    port2.postMessage(null);
  });
}
"#)]
extern "C" {
    #[wasm_bindgen(js_name = nextTask)]
    fn next_task() -> js_sys::Promise;
}

/// Resolves in a later task, once the browser has run what was queued before it.
pub async fn yield_now() {
    // The promise never rejects.
    let _ = JsFuture::from(next_task()).await;
}
