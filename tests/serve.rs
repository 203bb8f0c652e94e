//! `layerskip serve` over plain HTTP: completions equal Hugging Face's greedy output (whole and
//! streamed, every strategy), errors are OpenAI-shaped with the right status, a full queue
//! answers 503 with Retry-After, a client that goes away cancels its generation, and origins
//! named by `--cors-origin` (only those) get CORS headers. The
//! OpenAI client library and the load test are in tests/openai (run by .ci/run).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{fixture, reference};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `layerskip serve --port 0`, killed when dropped.
struct Server {
    child: Child,
    address: String,
    /// What it printed before it was ready.
    banner: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_layerskip"))
            .args(["serve", "--device", "cpu", "--port", "0"])
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env_remove("LAYERSKIP_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut banner = String::new();
        let address = loop {
            let line = lines
                .next()
                .expect("the server prints its address")
                .unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.split("http://").nth(1) {
                break rest
                    .trim_end_matches("/v1")
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Server {
            child,
            address,
            banner,
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        stream
    }

    /// Sends a request; the connection is left open for the response. `Host` and, for a POST,
    /// `Content-Type: application/json` are added unless `headers` has its own.
    fn send(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> TcpStream {
        let mut stream = self.connect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        let has = |name: &str| {
            headers
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with(name))
        };
        let host = format!("Host: {}", self.address);
        let json = "Content-Type: application/json";
        let defaults = [
            (!has("host:")).then_some(host.as_str()),
            (method == "POST" && !has("content-type:")).then_some(json),
        ];
        for h in headers
            .iter()
            .copied()
            .chain(defaults.into_iter().flatten())
        {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // A server may answer (413) before reading a large body, and close.
        let _ = stream.write_all(body);
        stream
    }

    /// Status, lower-cased head and body (de-chunked).
    fn request(&self, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Response {
        let mut stream = self.send(method, path, headers, body);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let head = head.to_ascii_lowercase();
        let body = match head.contains("transfer-encoding: chunked") {
            true => dechunk(body),
            false => body.to_string(),
        };
        Response { status, head, body }
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, &[], body.to_string().as_bytes())
    }

    fn health(&self) -> Value {
        self.request("GET", "/health", &[], b"").json()["jobs"].clone()
    }

    /// Waits until the model's thread is idle with an empty queue; returns its counts.
    fn idle(&self) -> Value {
        self.until("idle", |jobs| jobs["running"] == 0 && jobs["queued"] == 0)
    }

    /// Waits (at most a minute) until the job counts satisfy `done`; returns them.
    fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let jobs = self.health();
            if done(&jobs) {
                return jobs;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{what}: {jobs}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a streamed request that would run for 1000 tokens.
    fn send_long(&self) -> TcpStream {
        self.send(
            "POST",
            "/v1/completions",
            &[],
            long().to_string().as_bytes(),
        )
    }

    /// [`Server::send_long`], then waits for its first text.
    fn long_stream(&self) -> TcpStream {
        let mut stream = self.send_long();
        await_first_text(&mut stream);
        stream
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    /// Checks an OpenAI-shaped error: status, and a message containing `message`.
    fn error(&self, status: u16, message: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let error = &self.json()["error"];
        assert!(error["type"].is_string(), "{}", self.body);
        let text = error["message"].as_str().unwrap();
        assert!(text.contains(message), "{text}");
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

#[test]
fn completions_equal_hugging_face_greedy() {
    let r = reference("llama32_tiny");
    let dir = fixture("llama32_tiny");
    let server = Server::start(&["--model", dir.to_str().unwrap()]);
    let models = server.request("GET", "/v1/models", &[], b"").json();
    assert_eq!(models["data"][0]["id"], "llama32_tiny");
    let strategies = [
        json!({"strategy": "autoregressive"}),
        json!({"strategy": "self-speculative", "exit_layer": 2, "num_speculations": 3}),
        json!({"strategy": "self-speculative", "exit_layer": "auto", "num_speculations": "auto"}),
    ];
    for strategy in &strategies {
        for p in &r.prompts {
            let mut body = json!({
                "model": "llama32_tiny",
                "prompt": p.text,
                "max_tokens": p.greedy.max_new_tokens,
                "temperature": 0,
                "ignore_eos": true,
            });
            for (k, v) in strategy.as_object().unwrap() {
                body[k] = v.clone();
            }
            let what = format!("{strategy} {:?}", p.text);
            let whole = server.post("/v1/completions", &body);
            assert_eq!(whole.status, 200, "{what}: {}", whole.body);
            if strategy["strategy"] == "autoregressive" {
                // Without max_tokens: OpenAI's default for completions, 16.
                let mut unbounded = body.clone();
                unbounded.as_object_mut().unwrap().remove("max_tokens");
                let r = server.post("/v1/completions", &unbounded).json();
                assert_eq!(r["usage"]["completion_tokens"], 16, "{r}");
            }
            let whole = whole.json();
            assert_eq!(whole["object"], "text_completion");
            assert_eq!(whole["choices"][0]["text"], p.greedy.text, "{what}");
            assert_eq!(whole["choices"][0]["finish_reason"], "length", "{what}");
            let usage = &whole["usage"];
            assert_eq!(usage["prompt_tokens"], p.input_ids.len(), "{what}");
            assert_eq!(usage["completion_tokens"], p.greedy.tokens.len(), "{what}");
            assert_eq!(whole["stats"]["strategy"], strategy["strategy"], "{what}");

            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            let streamed = server.post("/v1/completions", &body);
            assert!(
                streamed.head.contains("text/event-stream"),
                "{}",
                streamed.head
            );
            let events = streamed.events();
            assert_eq!(events.last().unwrap(), "[DONE]", "{what}");
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["text"].as_str())
                .collect();
            assert_eq!(text, p.greedy.text, "{what}");
            let (closing, usage) = (&chunks[chunks.len() - 2], &chunks[chunks.len() - 1]);
            assert_eq!(closing["choices"][0]["finish_reason"], "length", "{what}");
            assert_eq!(usage["choices"], json!([]), "{what}");
            assert_eq!(
                usage["usage"]["completion_tokens"],
                p.greedy.tokens.len(),
                "{what}"
            );
        }
    }
}

#[test]
fn errors_are_openai_shaped() {
    let server = Server::start(&["--max-body-bytes", "4096", "--api-key", "sesame"]);
    let key = "Authorization: Bearer sesame";
    let post = |path: &str, body: &str| server.request("POST", path, &[key], body.as_bytes());
    post("/v1/completions", "{\"prompt\": ").error(400, "request body");
    post("/v1/completions", r#"{"prompt": "x", "logprobs": 2}"#).error(400, "`logprobs`");
    post("/v1/completions", r#"{"prompt": "x", "max_tokens": -1}"#).error(400, "`max_tokens`");
    post("/v1/completions", r#"{"prompt": "x", "top_p": 2}"#).error(400, "top_p");
    post(
        "/v1/completions",
        r#"{"prompt": "x", "exit_layer": 99, "strategy": "early-exit"}"#,
    )
    .error(400, "exit layer 99");
    post("/v1/chat/completions", r#"{"prompt": "x"}"#).error(400, "`prompt` belongs");
    for max in ["5000", "18446744073709551615"] {
        let body = format!(r#"{{"prompt": "x", "max_tokens": {max}}}"#);
        let past = post("/v1/completions", &body);
        past.error(400, "context holds 1024");
        assert_eq!(past.json()["error"]["code"], "context_length_exceeded");
    }
    let plain = server.request(
        "POST",
        "/v1/completions",
        &[key, "Content-Type: text/plain"],
        b"{}",
    );
    plain.error(415, "application/json");
    post("/v1/completions", r#"{"prompt": "x", "model": "gpt-4"}"#).error(404, "`gpt-4`");
    post("/v1/embeddings", "{}").error(404, "/v1/embeddings");
    server
        .request("GET", "/v1/chat/completions", &[key], b"")
        .error(405, "does not take GET");
    let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(8000));
    post("/v1/completions", &big).error(413, "limit of 4096 bytes (--max-body-bytes)");
    // What tools send by default is accepted; what asks for something unimplemented is not.
    let ok = post(
        "/v1/completions",
        r#"{"prompt": "x", "max_tokens": 1, "logprobs": null, "echo": false, "logit_bias": {}}"#,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);

    // The key: required everywhere (unknown paths too) but /health; the scheme in any case.
    for headers in [
        &[][..],
        &["Authorization: Bearer sesame2"],
        &["Authorization: sesame"],
    ] {
        for path in ["/v1/models", "/v1/nope"] {
            let r = server.request("GET", path, headers, b"");
            r.error(401, "API key");
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        }
    }
    assert_eq!(server.request("GET", "/health", &[], b"").status, 200);
    let lower = server.request("GET", "/v1/models", &["authorization: bearer sesame"], b"");
    assert_eq!(lower.status, 200, "{}", lower.body);
    let ok = post("/v1/completions", r#"{"prompt": "x", "max_tokens": 2}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
    // The exit layer and the context are checked on the model's thread: three jobs failed there.
    assert_eq!(server.health()["failed"], 3);

    // No key on an address the network can reach: a warning. A host name is resolved.
    let open = Server::start(&["--host", "0.0.0.0"]);
    assert!(open.banner.contains("warning") && open.banner.contains("without an API key"));
    assert!(!server.banner.contains("warning"), "{}", server.banner);
    let named = Server::start(&["--host", "localhost"]);
    assert!(!named.banner.contains("warning"), "{}", named.banner);
    assert_eq!(named.request("GET", "/health", &[], b"").status, 200);
    // Without a key, a loopback server answers loopback names only (a web page's DNS rebinding
    // would send its own); with a key the name does not matter.
    for host in ["localhost:1", "127.0.0.1", "[::1]:8080"] {
        let ok = named.request("GET", "/v1/models", &[&format!("Host: {host}")], b"");
        assert_eq!(ok.status, 200, "{host}: {}", ok.body);
    }
    let rebound = named.request("GET", "/v1/models", &["Host: attacker.example:8080"], b"");
    rebound.error(403, "not a loopback name");
    let keyed = server.request("GET", "/v1/models", &[key, "Host: any.example"], b"");
    assert_eq!(keyed.status, 200, "{}", keyed.body);
}

/// `--cors-origin`: the browser's preflight (which carries no key) is answered for the origins
/// named, with the headers the page asked for; their requests and errors carry
/// Access-Control-Allow-Origin; other origins, and a server without the flag, get none.
#[test]
fn named_origins_may_call_from_a_browser() {
    let page = "http://localhost:5173";
    let preflight = |server: &Server, origin: &str| {
        server.request(
            "OPTIONS",
            "/v1/chat/completions",
            &[
                &format!("Origin: {origin}"),
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: authorization, content-type, x-stainless-os",
            ],
            b"",
        )
    };
    let allowed = |r: &Response| {
        r.head
            .lines()
            .find_map(|l| l.strip_prefix("access-control-allow-origin: "))
            .map(str::to_string)
    };
    let keyed = Server::start(&["--cors-origin", page, "--api-key", "sesame"]);
    let answer = preflight(&keyed, page);
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(allowed(&answer).as_deref(), Some(page));
    assert!(answer
        .head
        .contains("access-control-allow-methods: get,post"));
    assert!(answer
        .head
        .contains("access-control-allow-headers: authorization, content-type, x-stainless-os"));
    assert_eq!(allowed(&preflight(&keyed, "http://evil.example")), None);
    let from_page = [
        &format!("Origin: {page}")[..],
        "Authorization: Bearer sesame",
    ];
    let body = br#"{"prompt": "x", "max_tokens": 1}"#;
    let ok = keyed.request("POST", "/v1/completions", &from_page, body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(allowed(&ok).as_deref(), Some(page));
    assert!(ok
        .head
        .contains("access-control-expose-headers: retry-after"));
    let refused = keyed.request("POST", "/v1/completions", &from_page[..1], body);
    refused.error(401, "API key");
    assert_eq!(allowed(&refused).as_deref(), Some(page));
    let elsewhere = [
        "Origin: http://evil.example",
        "Authorization: Bearer sesame",
    ];
    assert_eq!(
        allowed(&keyed.request("GET", "/v1/models", &elsewhere, b"")),
        None
    );

    let any = Server::start(&["--cors-origin", "*"]);
    assert_eq!(allowed(&preflight(&any, page)).as_deref(), Some("*"));
    assert!(
        any.banner.contains("any web page you visit"),
        "{}",
        any.banner
    );
    assert!(!keyed.banner.contains("warning"), "{}", keyed.banner);
    let plain = Server::start(&[]);
    let no_cors = preflight(&plain, page);
    assert_eq!(allowed(&no_cors), None);
    assert_eq!(no_cors.status, 405, "{}", no_cors.body);
}

/// Defaults the model cannot honour stop the server at start, not every request later.
#[test]
fn bad_defaults_fail_at_start() {
    for (args, expected) in [
        (
            &["--strategy", "self-speculative", "--exit-layer", "99"][..],
            "exit layer 99",
        ),
        (
            &["--strategy", "early-exit", "--exit-layer", "auto"],
            "exit_layer auto",
        ),
        (&["--max-body-bytes", "0"], "--max-body-bytes"),
        (
            &["--cors-origin", "http://localhost:5173/app"],
            "--cors-origin",
        ),
    ] {
        let mut all = vec!["serve", "--device", "cpu", "--port", "0"];
        all.extend(args);
        let (ok, _, stderr) = common::layerskip(&all);
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// A streamed greedy request for 1000 tokens.
fn long() -> Value {
    json!({
        "prompt": "def f(x):",
        "max_tokens": 1000,
        "ignore_eos": true,
        "temperature": 0,
        "stream": true,
    })
}

/// Reads a streamed response until its first generated text has arrived.
fn await_first_text(stream: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"text\"") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
}

#[test]
fn a_full_queue_refuses_and_departed_clients_cancel() {
    // No waiting room: while one request runs, the next is refused.
    let server = Server::start(&["--queue", "0"]);
    let first = server.long_stream();
    let refused = server.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 2}));
    refused.error(503, "queue");
    assert!(refused.head.contains("retry-after: 1"), "{}", refused.head);
    // The streaming client goes away: its generation stops (it would run for 1000 tokens).
    drop(first);
    let jobs = server.idle();
    assert_eq!(
        (jobs["cancelled"].as_u64(), jobs["finished"].as_u64()),
        (Some(1), Some(0)),
        "{jobs}"
    );

    // A client waiting for a whole result goes away too.
    let mut whole = long();
    whole["stream"] = json!(false);
    let waiting = server.send("POST", "/v1/completions", &[], whole.to_string().as_bytes());
    server.until("running", |jobs| jobs["running"] == 1);
    drop(waiting);
    let jobs = server.idle();
    assert_eq!(
        (jobs["cancelled"].as_u64(), jobs["finished"].as_u64()),
        (Some(2), Some(0)),
        "{jobs}"
    );

    // The server goes on serving.
    let ok = server.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 3}));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(server.idle()["finished"], 1);
}

/// A client that leaves while its request waits frees its place in the queue at once, not when
/// the model reaches the request (clients that time out and retry would otherwise fill it).
#[test]
fn a_departed_client_frees_its_place_in_the_queue() {
    let server = Server::start(&["--queue", "1"]);
    let running = server.long_stream();
    let waiting = server.send_long();
    server.until("queued", |jobs| jobs["queued"] == 1);
    drop(waiting);
    let jobs = server.until("withdrawn", |jobs| jobs["queued"] == 0);
    // Withdrawn while the first request still runs, and a new one finds the place free.
    assert_eq!(
        (jobs["running"].as_u64(), jobs["cancelled"].as_u64()),
        (Some(1), Some(1)),
        "{jobs}"
    );
    let next = server.send_long();
    server.until("queued again", |jobs| jobs["queued"] == 1);
    drop((running, next));
    let jobs = server.idle();
    assert_eq!(
        (jobs["cancelled"].as_u64(), jobs["finished"].as_u64()),
        (Some(3), Some(0)),
        "{jobs}"
    );
}
