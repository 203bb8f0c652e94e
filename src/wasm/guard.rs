//! Promises that settle even when Rust panics. On wasm32 a panic aborts: the hook runs, then the
//! module traps and the JavaScript exception leaves whatever microtask was polling. The hook
//! below rejects every promise still in flight with the panic's message, and counts the panic so
//! that models loaded before it report themselves unusable (their state may be half-updated)
//! instead of failing in stranger ways; loading a model again starts afresh.

use std::cell::{Cell, RefCell};
use std::future::Future;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;

thread_local! {
    /// Reject functions of the promises in flight, by id.
    static IN_FLIGHT: RefCell<Vec<(u64, js_sys::Function)>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    /// Panics so far, and the last one's message.
    static PANICS: Cell<u32> = const { Cell::new(0) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

pub fn error(message: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&message.to_string()).into()
}

fn install_hook() {
    if HOOKED.replace(true) {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let message = format!("internal error: {info}");
        web_sys::console::error_1(&message.as_str().into());
        PANICS.set(PANICS.get() + 1);
        let _ = LAST_PANIC.try_with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                l.clone_from(&message);
            }
        });
        let pending = IN_FLIGHT
            .try_with(|f| f.try_borrow_mut().map(|mut f| std::mem::take(&mut *f)))
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let rejection = error(format!(
            "{message}; the model is unusable now, load it again"
        ));
        for (_, reject) in pending {
            let _ = reject.call1(&JsValue::NULL, &rejection);
        }
    }));
}

/// Panics seen so far: a model records this when it is made and refuses to run after more.
pub fn panics() -> u32 {
    PANICS.get()
}

/// Why a model made before the latest panic is unusable.
pub fn unusable() -> JsValue {
    let last = LAST_PANIC.with(|l| l.borrow().clone());
    error(format!(
        "the model is unusable after an internal error ({last}); load it again"
    ))
}

/// A Promise for `future` that is rejected, not left pending, if the future panics.
pub fn guarded<F>(future: F) -> js_sys::Promise
where
    F: Future<Output = Result<JsValue, JsValue>> + 'static,
{
    install_hook();
    let mut future = Some(future);
    js_sys::Promise::new(&mut |resolve, reject| {
        let Some(future) = future.take() else {
            return;
        };
        let id = NEXT_ID.replace(NEXT_ID.get() + 1);
        IN_FLIGHT.with(|f| f.borrow_mut().push((id, reject.clone())));
        spawn_local(async move {
            let result = future.await;
            IN_FLIGHT.with(|f| f.borrow_mut().retain(|(i, _)| *i != id));
            let _ = match result {
                Ok(value) => resolve.call1(&JsValue::NULL, &value),
                Err(e) => reject.call1(&JsValue::NULL, &e),
            };
        });
    })
}
