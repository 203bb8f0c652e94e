//! `layerskip serve`: an OpenAI-compatible HTTP server. `GET /v1/models`, `POST /v1/completions`
//! and `POST /v1/chat/completions` (whole results or server-sent events ending in
//! `data: [DONE]`), `GET /health`. Requests take OpenAI's fields and LayerSkip's own (see
//! `layerskip::openai`); results carry `usage` and, beside it, this runtime's `stats`.
//!
//! The model runs on its own thread behind a bounded queue (`worker`); tokio serves HTTP.
//! Errors are OpenAI's JSON shape: 400 for a bad body or value or a prompt past the context,
//! 401 without the API key, 404 for an unknown model or path, 413 for a body over the limit, 503
//! with Retry-After when the queue is full. Pages of the origins `--cors-origin` names may call
//! it from a browser.

mod worker;

use super::{load, ModelArgs};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, Sse as SseBody};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use layerskip::adaptive::Setting;
use layerskip::openai::{Endpoint, OpenAiRequest, Reply};
use layerskip::request::defaults;
use layerskip::{Error, GenerateRequest, Result, StrategyKind};
use serde_json::{json, Value};
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use worker::{Event, Refused, Worker};

/// The environment variable that can hold the API key instead of `--api-key`.
const API_KEY_VAR: &str = "LAYERSKIP_API_KEY";

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address or host name to listen on. Loopback by default: anything else is reachable from
    /// the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 (default: the LAYERSKIP_API_KEY variable).
    #[arg(long)]
    api_key: Option<String>,
    /// Requests that may wait while the model runs one; beyond that the server answers 503.
    #[arg(long, default_value_t = 8)]
    queue: usize,
    /// Largest request body accepted (bytes); larger ones get 413.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1..))]
    max_body_bytes: u32,
    /// The model's id in the API (default: the checkpoint folder's name, or
    /// "layerskip-default" for the embedded model).
    #[arg(long)]
    model_name: Option<String>,
    /// The strategy of requests that name none.
    #[arg(long, value_enum, default_value_t)]
    strategy: StrategyKind,
    /// The exit layer of requests that name none (a number or `auto`).
    #[arg(long)]
    exit_layer: Option<Setting>,
    /// Drafts per round for requests that name none (a number or `auto`).
    #[arg(long, default_value_t = Setting::Fixed(defaults::NUM_SPECULATIONS))]
    num_speculations: Setting,
    /// Prefill every prompt whole (by default a request sharing a prefix with the previous one
    /// computes only the rest).
    #[arg(long)]
    no_prefix_reuse: bool,
    /// Let web pages from ORIGIN (e.g. `http://localhost:5173`, or `*` for any) call the server
    /// from a browser (CORS); repeat for several. Without it, browsers keep pages from reading
    /// the answers.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
}

struct App {
    worker: Worker,
    max_body_bytes: u32,
    /// LayerSkip's fields for requests that leave them out.
    base: GenerateRequest,
    model_id: String,
    /// Unix seconds at start, the `created` of the model object.
    started: i64,
    requests: AtomicU64,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var(API_KEY_VAR).ok())
        .filter(|k| !k.is_empty());
    let base = GenerateRequest {
        strategy: args.strategy,
        exit_layer: args.exit_layer,
        num_speculations: args.num_speculations,
        no_prefix_reuse: args.no_prefix_reuse,
        ..Default::default()
    };
    base.validate()?;
    let cors = cors(&args.cors_origins)?;
    let any_origin = args.cors_origins.iter().any(|o| o == "*");
    let model_id = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .model
            .as_ref()
            .and_then(|dir| dir.canonicalize().ok())
            .and_then(|dir| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "layerskip-default".into())
    });
    // Listen before loading, so a port in use fails at once, not after a long load.
    let address = format!("{}:{}", args.host, args.port);
    let cannot = |e: std::io::Error| Error::Invalid(format!("cannot listen on {address}: {e}"));
    let addresses: Vec<_> = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .map_err(cannot)?
        .collect();
    let listener = std::net::TcpListener::bind(&addresses[..]).map_err(cannot)?;
    listener.set_nonblocking(true).map_err(cannot)?;
    let bound = listener.local_addr().map_err(cannot)?;
    let model_args = args.model;
    let worker = Worker::start(move || load(&model_args), args.queue, base.clone())?;
    let app = Arc::new(App {
        worker,
        max_body_bytes: args.max_body_bytes,
        base,
        model_id,
        started: layerskip::clock::unix_seconds(),
        requests: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the server's runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(cannot)?;
        if !bound.ip().is_loopback() && api_key.is_none() {
            eprintln!(
                "warning: listening on {bound}, reachable from the network, without an API key \
                 (--api-key or {API_KEY_VAR}): anyone who can reach it can use the model"
            );
        }
        if any_origin && api_key.is_none() {
            eprintln!(
                "warning: --cors-origin * without an API key: any web page you visit can use \
                 the model"
            );
        }
        eprintln!(
            "serving {} on http://{bound}/v1 (queue {}, {})",
            app.model_id,
            args.queue,
            match api_key {
                Some(_) => "API key required",
                None => "no API key",
            }
        );
        let access = Access {
            api_key,
            loopback: bound.ip().is_loopback(),
        };
        let router = router(app, access);
        // Outermost: preflights carry no API key, and errors need the headers too.
        let router = match cors {
            Some(cors) => router.layer(cors),
            None => router,
        };
        axum::serve(listener, router)
            .await
            .map_err(|e| Error::Invalid(format!("server: {e}")))
    })
}

/// The CORS policy for `--cors-origin`: the origins named (or any), GET and POST with whatever
/// headers the page asks for (OpenAI's client sends its own `x-stainless-*` ones), and
/// Retry-After readable. None without the flag: browsers then keep answers from other origins.
fn cors(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|o| origin(o))
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(parsed)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(24 * 60 * 60)),
    ))
}

/// An origin as browsers send it: `scheme://host[:port]` (a trailing `/` is dropped).
fn origin(text: &str) -> Result<HeaderValue> {
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    let well_formed = trimmed.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !rest.is_empty()
            && !rest.contains(['/', '?', '#', '*', ' '])
    });
    match HeaderValue::from_str(trimmed) {
        Ok(value) if well_formed => Ok(value),
        _ => Err(Error::Invalid(format!(
            "--cors-origin `{text}`: expected an origin such as http://localhost:5173 \
             (scheme, host and port, no path), or *"
        ))),
    }
}

/// Who may use the server: the API key, if any, and whether it listens on loopback only.
struct Access {
    api_key: Option<String>,
    loopback: bool,
}

fn router(app: Arc<App>, access: Access) -> Router {
    let limit = app.max_body_bytes as usize;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        // Outside the routes, so that unknown paths need the key too.
        .layer(middleware::from_fn_with_state(Arc::new(access), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
struct ApiError {
    status: StatusCode,
    message: String,
    code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            code: None,
        }
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn body(&self) -> Value {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::ContextLength { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
                .code("context_length_exceeded"),
            Error::Invalid(_) | Error::Tokenizer(_) | Error::File { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// A body that could not be read: over the limit (413, naming it), or cut off.
fn body_error(rejection: BytesRejection, limit: u32) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over this server's limit of {limit} bytes (--max-body-bytes)"
            ),
        )
        .code("request_too_large"),
        status => ApiError::new(status, format!("request body: {}", rejection.body_text())),
    }
}

/// Checks every request before its handler: the API key (everywhere but /health), and for a
/// server without a key on loopback, that it comes from this machine's own programs rather than
/// a web page. A page can send a "simple" cross-origin POST (text/plain) without the browser
/// asking first, and with DNS rebinding read the answer; requiring a JSON body and a loopback
/// Host name closes both.
async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(key) = access
        .api_key
        .as_deref()
        .filter(|_| request.uri().path() != "/health")
    {
        // The scheme is case-insensitive (RFC 9110).
        let given = text(header::AUTHORIZATION)
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if !given.is_some_and(|given| same(given.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or incorrect API key: send `Authorization: Bearer KEY`",
            )
            .code("invalid_api_key")
            .into_response();
        }
    } else if access.loopback {
        let host = text(header::HOST).unwrap_or("");
        if !is_loopback_name(host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{host}` is not a loopback name: a server without an API key answers \
                     localhost, 127.0.0.1 and [::1] only (--api-key lifts this)"
                ),
            )
            .into_response();
        }
    }
    if request.method() == Method::POST
        && !text(header::CONTENT_TYPE).is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON with `Content-Type: application/json`",
        )
        .into_response();
    }
    next.run(request).await
}

/// Whether a Host header names this machine: localhost, 127.x.x.x or [::1], with any port.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Liveness, and what the model's thread has done: jobs queued and running, finished, failed
/// and cancelled.
async fn health(State(app): State<Arc<App>>) -> Response {
    let stopped = app.worker.stopped();
    let mut health = json!({
        "status": if stopped { "error" } else { "ok" },
        "model": app.model_id,
    });
    health["jobs"] = app.worker.counts().to_json();
    let status = match stopped {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::OK,
    };
    (status, Json(health)).into_response()
}

fn model_object(app: &App) -> Value {
    json!({
        "id": app.model_id,
        "object": "model",
        "created": app.started,
        "owned_by": "layerskip",
        "max_context": app.worker.max_context,
    })
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&app)]}))
}

async fn model(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match check_model(&app, Some(&id)) {
        Ok(()) => Json(model_object(&app)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check_model(app: &App, id: Option<&str>) -> std::result::Result<(), ApiError> {
    match id {
        Some(id) if id != app.model_id => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the model `{id}` does not exist; this server has `{}`",
                app.model_id
            ),
        )
        .code("model_not_found")),
        _ => Ok(()),
    }
}

async fn unknown_path(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("unknown request URL: {method} {}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

async fn completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    respond(app, Endpoint::Completions, body).await
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    respond(app, Endpoint::Chat, body).await
}

async fn respond(
    app: Arc<App>,
    endpoint: Endpoint,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match start(&app, endpoint, body).await {
        Ok((reply, events)) if reply.stream.is_some() => {
            SseBody::new(stream_events(reply, events)).into_response()
        }
        Ok((reply, mut events)) => loop {
            match events.recv().await {
                Some(Event::Done(completion)) => {
                    break Json(reply.result(&completion)).into_response()
                }
                Some(Event::Failed(e)) => break ApiError::from(e).into_response(),
                Some(Event::Started | Event::Text(..)) => continue,
                None => break stopped().into_response(),
            }
        },
        Err(e) => e.into_response(),
    }
}

fn stopped() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the model's thread has stopped after an internal error: restart the server",
    )
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// Checks a request, queues it and waits until the model has taken it up: an error found
/// before generation begins (a prompt past the context, a bad exit layer) is still an HTTP
/// status, not an event in a stream that already answered 200.
async fn start(
    app: &App,
    endpoint: Endpoint,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<(Reply, Events), ApiError> {
    let body = body.map_err(|e| body_error(e, app.max_body_bytes))?;
    let request = OpenAiRequest::from_json(&body)?;
    check_model(app, request.model.as_deref())?;
    request.validate(endpoint, &app.base)?;
    let reply = Reply::new(
        &request,
        endpoint,
        app.requests.fetch_add(1, Ordering::Relaxed),
        app.model_id.clone(),
    );
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
    // Held while the job waits: if this handler is dropped (the client left), it withdraws it.
    let _ticket = match app.worker.submit(request, sender) {
        Ok(ticket) => ticket,
        Err(Refused::Full) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy: its queue of requests is full; retry shortly",
            )
            .code("queue_full"))
        }
        Err(Refused::Stopped) => return Err(stopped()),
    };
    match events.recv().await {
        Some(Event::Started) => Ok((reply, events)),
        Some(Event::Failed(e)) => Err(e.into()),
        Some(_) | None => Err(stopped()),
    }
}

/// A streamed answer as server-sent events: OpenAI's chunks, then `[DONE]`. Dropping the stream
/// (the client went away) drops the receiver, which cancels the generation.
fn stream_events(
    reply: Reply,
    events: Events,
) -> impl Stream<Item = std::result::Result<Sse, std::convert::Infallible>> {
    let data = |value: Value| Sse::default().data(value.to_string());
    let opening = stream::iter(reply.opening_chunk().map(data));
    let body = stream::unfold(events, |mut events| async move {
        events.recv().await.map(|event| (event, events))
    })
    .flat_map(move |event| {
        let out: Vec<Sse> = match event {
            Event::Started => vec![],
            Event::Text(text, kind) => vec![data(reply.text_chunk(&text, kind))],
            Event::Done(completion) => {
                let mut out: Vec<Sse> = reply
                    .closing_chunks(&completion)
                    .into_iter()
                    .map(data)
                    .collect();
                out.push(Sse::default().data("[DONE]"));
                out
            }
            // The status line is sent: the error goes in the stream, as OpenAI's does.
            Event::Failed(e) => vec![data(ApiError::from(e).body())],
        };
        stream::iter(out)
    });
    opening.chain(body).map(Ok)
}
