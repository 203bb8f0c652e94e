//! The clock on both targets: milliseconds from an arbitrary origin, and Unix seconds.
//! `std::time::Instant` panics on wasm32-unknown-unknown, so the browser uses `performance.now()`
//! (or `Date.now()` where there is no performance object).

#[cfg(not(target_arch = "wasm32"))]
pub fn now_ms() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
}

#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> f64 {
    js_sys::Reflect::get(&js_sys::global(), &"performance".into())
        .ok()
        .and_then(|p| js_sys::Reflect::get(&p, &"now".into()).ok().map(|f| (p, f)))
        .and_then(|(p, f)| js_sys::Function::from(f).call0(&p).ok())
        .and_then(|v| v.as_f64())
        .unwrap_or_else(js_sys::Date::now)
}

/// Seconds since the Unix epoch (UTC): dates in chat templates, `created` in OpenAI replies.
#[cfg(not(target_arch = "wasm32"))]
pub fn unix_seconds() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(target_arch = "wasm32")]
pub fn unix_seconds() -> i64 {
    (js_sys::Date::now() / 1e3) as i64
}
