//! OpenAI's chat and completions shapes: the request body, the result and the streamed chunks.
//! `layerskip serve` speaks them over HTTP and the browser package's `chat.completions.create`
//! in JavaScript, so both take OpenAI's field names and defaults (temperature 1; `max_tokens` 16
//! for completions, what the context leaves for chat) and add LayerSkip's own fields (`strategy`, `exit_layer`, ...) with the
//! defaults of [`GenerateRequest`] or of the server's command line.

use crate::adaptive::Setting;
use crate::chat::Message;
use crate::error::{Error, Result};
use crate::generate::{Stats, StopReason, StrategyKind, TokenKind};
use crate::model::{Completion, Model};
use crate::request::GenerateRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `max_tokens` of a completions request that names none (OpenAI's default).
pub const COMPLETIONS_MAX_TOKENS: usize = 16;

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: `messages`, rendered with the model's chat template.
    Chat,
    /// `/v1/completions`: a raw `prompt`.
    Completions,
}

/// A chat or completions request body. Unknown fields are refused by name (OpenAI options this
/// runtime does not implement, such as `logprobs` or `tools`, would otherwise be silently
/// ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub prompt: Option<Prompt>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<usize>,
    /// The chat API's newer name for `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    /// OpenAI's default is 1 (sampling); 0 decodes greedily.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Only 1 choice per request.
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    /// Without one, a sampled request draws a fresh seed.
    pub seed: Option<u64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Accepted and unused, as OpenAI's end-user identifier.
    pub user: Option<String>,
    // OpenAI options this runtime does not implement: accepted with the values that ask for
    // nothing (what many tools send by default), refused by name otherwise (see `unsupported`).
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub echo: Option<Value>,
    pub best_of: Option<Value>,
    pub suffix: Option<Value>,
    pub logit_bias: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    pub response_format: Option<Value>,
    pub store: Option<Value>,
    /// Accepted and unused (they concern OpenAI's own service).
    pub metadata: Option<Value>,
    pub service_tier: Option<Value>,
    // LayerSkip's own fields (see GenerateRequest).
    pub strategy: Option<StrategyKind>,
    pub exit_layer: Option<Setting>,
    pub num_speculations: Option<Setting>,
    pub draft_confidence: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
}

/// One chat message. Content is a string or OpenAI's list of text parts; fields a client echoes
/// back from a response (`refusal`, `tool_calls`, ...) are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Batch(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and `stats`) before `[DONE]`.
    pub include_usage: bool,
}

/// Why a choice ended, as OpenAI (and WebLLM, for `abort`) spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller cancelled (an AbortSignal, a disconnected client).
    Abort,
}

impl From<StopReason> for FinishReason {
    fn from(reason: StopReason) -> Self {
        match reason {
            StopReason::Eos | StopReason::StopString => FinishReason::Stop,
            StopReason::MaxNewTokens => FinishReason::Length,
            StopReason::Cancelled => FinishReason::Abort,
        }
    }
}

fn invalid(why: impl Into<String>) -> Error {
    Error::Invalid(why.into())
}

impl OpenAiRequest {
    /// Parses a JSON body; the error names the field and what was wrong.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        let mut reader = serde_json::Deserializer::from_slice(body);
        let request = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            match e.path().to_string() {
                // "." is the whole body, "?" a syntax error before any field.
                path if path == "." || path == "?" => {
                    invalid(format!("request body: {}", e.inner()))
                }
                path => invalid(format!("request body: `{path}`: {}", e.inner())),
            }
        })?;
        reader
            .end()
            .map_err(|e| invalid(format!("request body: {e}")))?;
        Ok(request)
    }

    /// Checks what needs no model: the endpoint's own fields, one choice, OpenAI's ranges, then
    /// everything [`GenerateRequest::validate`] checks.
    pub fn validate(&self, endpoint: Endpoint, base: &GenerateRequest) -> Result<()> {
        match endpoint {
            Endpoint::Chat => {
                if self.prompt.is_some() {
                    return Err(invalid(
                        "`prompt` belongs to /v1/completions; chat takes `messages`",
                    ));
                }
                match &self.messages {
                    None => return Err(invalid("`messages` is required")),
                    Some(m) if m.is_empty() => {
                        return Err(invalid("`messages` must hold at least one message"))
                    }
                    Some(m) => {
                        for message in m {
                            message.text()?;
                        }
                    }
                }
            }
            Endpoint::Completions => {
                if self.messages.is_some() {
                    return Err(invalid(
                        "`messages` belongs to /v1/chat/completions; completions take `prompt`",
                    ));
                }
                self.prompt_text()?;
            }
        }
        self.unsupported()?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("`n` must be 1: one choice per request"));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(invalid(format!("`temperature` must be in [0, 2], got {t}")));
            }
        }
        if self.max_new_tokens() == Some(0) {
            return Err(invalid("`max_tokens` must be at least 1"));
        }
        self.generate_request(base, 1, 0).validate()
    }

    /// Refuses the OpenAI options this runtime does not implement unless their value asks for
    /// nothing: false, 0, an empty string, list or object, or the option's own no-op value.
    fn unsupported(&self) -> Result<()> {
        let options: [(&str, &Option<Value>, Value); 11] = [
            ("logprobs", &self.logprobs, Value::Null),
            ("top_logprobs", &self.top_logprobs, Value::Null),
            ("echo", &self.echo, Value::Null),
            ("best_of", &self.best_of, json!(1)),
            ("suffix", &self.suffix, Value::Null),
            ("logit_bias", &self.logit_bias, Value::Null),
            ("tools", &self.tools, Value::Null),
            ("tool_choice", &self.tool_choice, json!("none")),
            (
                "parallel_tool_calls",
                &self.parallel_tool_calls,
                json!(true),
            ),
            (
                "response_format",
                &self.response_format,
                json!({"type": "text"}),
            ),
            ("store", &self.store, Value::Null),
        ];
        for (name, value, no_op) in options {
            let Some(value) = value else { continue };
            let nothing = match value {
                Value::Bool(b) => !b,
                Value::Number(n) => n.as_f64() == Some(0.0),
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::Null => true,
            };
            // With no tools, "auto" chooses none.
            let no_tools = name == "tool_choice" && value == "auto";
            if !(nothing || *value == no_op || no_tools) {
                return Err(invalid(format!(
                    "`{name}` is not supported by this server (got {value})"
                )));
            }
        }
        Ok(())
    }

    /// `max_completion_tokens`, else `max_tokens`: `None` means the endpoint's default (16 for
    /// completions, the rest of the context for chat).
    pub fn max_new_tokens(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn streamed(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The conversation, as the chat template takes it. OpenAI's `developer` role is the
    /// `system` role of models that predate it.
    pub fn messages(&self) -> Result<Vec<Message>> {
        self.messages
            .iter()
            .flatten()
            .map(|m| {
                let role = match m.role.as_str() {
                    "developer" => "system",
                    role => role,
                };
                Ok(Message::new(role, m.text()?))
            })
            .collect()
    }

    /// The completions prompt: a string, or a list of exactly one.
    pub fn prompt_text(&self) -> Result<&str> {
        match &self.prompt {
            None => Err(invalid("`prompt` is required")),
            Some(Prompt::Text(text)) => Ok(text),
            Some(Prompt::Batch(list)) => match list.as_slice() {
                [one] => Ok(one),
                _ => Err(invalid(format!(
                    "`prompt` must be one string (a list of {} prompts asks for a batch, which this server does not run)",
                    list.len()
                ))),
            },
        }
    }

    /// Runs this request (validated: chat if it has messages, else completions) on `model`, as
    /// the server and the browser do. `started` is called once
    /// the request has been checked against the model, before anything runs (false: the caller
    /// has gone, nothing runs); a streamed request's output text then goes to `on_text` piece by
    /// piece with how its token was made (rejected drafts left out); `go_on` is asked after
    /// every token (false: stop, finish reason "abort").
    pub async fn complete(
        &self,
        model: &mut Model,
        base: &GenerateRequest,
        fresh_seed: u64,
        started: impl FnOnce() -> bool,
        mut on_text: impl FnMut(&str, TokenKind),
        go_on: impl Fn() -> bool,
    ) -> Result<Completion> {
        let (prompt, generate) = self.prepare(model, base, fresh_seed)?;
        let options = model.options(&generate)?;
        if !started() {
            return Err(invalid("the caller went away before generation began"));
        }
        let streamed = self.streamed();
        model
            .complete_ids(prompt, &options, &generate.stop, |piece| {
                if streamed && piece.kind != TokenKind::Rejected && !piece.text.is_empty() {
                    on_text(piece.text, piece.kind);
                }
                go_on()
            })
            .await
    }

    /// What `model` is to run for this request: the prompt's ids (the messages rendered with its
    /// chat template, or the prompt encoded) and the generation request, whose token budget is
    /// the request's or, without one, what the context leaves. A prompt and budget past the
    /// context are an error here, before anything runs.
    fn prepare(
        &self,
        model: &Model,
        base: &GenerateRequest,
        fresh_seed: u64,
    ) -> Result<(Vec<u32>, GenerateRequest)> {
        let chat = self.messages.is_some();
        let prompt = match chat {
            true => model.chat_prompt(&self.messages()?, true)?,
            false => model.tokenizer.encode(self.prompt_text()?)?,
        };
        let limit = model.max_context();
        // OpenAI's legacy completions default to 16 tokens, chat to what the context leaves.
        let room = limit.saturating_sub(prompt.len()).max(1);
        let wanted = self.max_new_tokens().unwrap_or(match chat {
            true => room,
            false => COMPLETIONS_MAX_TOKENS.min(room),
        });
        // u128: `max_tokens` comes from the request and may be as large as usize allows.
        let needed = prompt.len() as u128 + wanted as u128;
        if needed > limit as u128 {
            return Err(Error::ContextLength { needed, limit });
        }
        Ok((prompt, self.generate_request(base, wanted, fresh_seed)))
    }

    /// The generation request: OpenAI's fields with OpenAI's defaults, LayerSkip's own fields
    /// over `base`. `max_new_tokens` is the request's or what the context leaves; `fresh_seed`
    /// serves a sampled request that names no seed.
    pub fn generate_request(
        &self,
        base: &GenerateRequest,
        max_new_tokens: usize,
        fresh_seed: u64,
    ) -> GenerateRequest {
        let strategy = self.strategy.unwrap_or(base.strategy);
        GenerateRequest {
            strategy,
            exit_layer: match (self.exit_layer, base.exit_layer) {
                (Some(exit), _) => Some(exit),
                // A default of `auto` is for self-speculative requests: an early-exit request
                // that names no layer takes the model's default.
                (None, Some(Setting::Auto)) if strategy == StrategyKind::EarlyExit => None,
                (None, base) => base,
            },
            num_speculations: self.num_speculations.unwrap_or(base.num_speculations),
            max_new_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(base.top_k),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or(fresh_seed),
            stop: match &self.stop {
                None => vec![],
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(list)) => list.clone(),
            },
            ignore_eos: self.ignore_eos.unwrap_or(base.ignore_eos),
            draft_confidence: self.draft_confidence.or(base.draft_confidence),
            repetition_penalty: self.repetition_penalty.unwrap_or(base.repetition_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            no_prefix_reuse: base.no_prefix_reuse,
        }
    }
}

impl ChatMessage {
    /// The message's text: a string, or its text parts joined.
    fn text(&self) -> Result<String> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(text)) => Ok(text.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(text)) => Ok(text.as_str()),
                    (kind, _) => Err(invalid(format!(
                        "message content part of type `{kind}`: only text parts (with `text`) are supported"
                    ))),
                })
                .collect(),
        }
    }
}

/// What every result and chunk of one request shares.
#[derive(Debug, Clone)]
pub struct Reply {
    pub endpoint: Endpoint,
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    pub model: String,
    /// `None`: one whole result. Streamed: whether a last chunk carries the usage
    /// (`stream_options.include_usage`; the other chunks then say `"usage": null`).
    pub stream: Option<bool>,
}

/// OpenAI's token counts, with the prompt tokens the KV cache kept from the previous request.
fn usage(completion: &Completion) -> Value {
    let (prompt, generated) = (completion.prompt_tokens.len(), completion.tokens.len());
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": completion.stats.cached_prompt_tokens},
    })
}

impl Reply {
    /// A reply created now; `sequence` makes its id unique.
    pub fn new(
        request: &OpenAiRequest,
        endpoint: Endpoint,
        sequence: u64,
        model: impl Into<String>,
    ) -> Self {
        let created = crate::clock::unix_seconds();
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        Reply {
            endpoint,
            id: format!("{prefix}-{created:x}{sequence:08x}"),
            created,
            model: model.into(),
            stream: request.streamed().then(|| {
                request
                    .stream_options
                    .as_ref()
                    .is_some_and(|o| o.include_usage)
            }),
        }
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.endpoint, streamed) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn envelope(&self, streamed: bool, choices: Value) -> Value {
        let mut envelope = json!({
            "id": self.id,
            "object": self.object(streamed),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if streamed && self.stream == Some(true) {
            envelope["usage"] = Value::Null;
        }
        envelope
    }

    /// The whole result of a request that was not streamed; `stats` (this runtime's speculation
    /// and timing figures) sits beside `usage`.
    pub fn result(&self, completion: &Completion) -> Value {
        let finish = FinishReason::from(completion.stats.stop_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Endpoint::Completions => json!({
                "index": 0,
                "text": completion.text,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        let mut result = self.envelope(false, json!([choice]));
        result["usage"] = usage(completion);
        result["stats"] = json!(completion.stats);
        result
    }

    /// The chunk that opens a chat stream (the role), or none for completions.
    pub fn opening_chunk(&self) -> Option<Value> {
        (self.endpoint == Endpoint::Chat).then(|| {
            self.envelope(
                true,
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            )
        })
    }

    /// A streamed piece of text; `kind` (an extension: plain, accepted or bonus) says how its
    /// token was produced.
    pub fn text_chunk(&self, text: &str, kind: TokenKind) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({"index": 0, "delta": {"content": text, "kind": kind}, "logprobs": null, "finish_reason": null})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "kind": kind, "logprobs": null, "finish_reason": null})
            }
        };
        self.envelope(true, json!([choice]))
    }

    /// The chunks that end a stream: the choice's finish reason, then, when the request asked
    /// for usage (`stream_options.include_usage`), a chunk without choices carrying `usage` and
    /// `stats`.
    pub fn closing_chunks(&self, completion: &Completion) -> Vec<Value> {
        let mut chunks = vec![self.closing_chunk(&completion.stats)];
        if self.stream == Some(true) {
            let mut chunk = self.envelope(true, json!([]));
            chunk["usage"] = usage(completion);
            chunk["stats"] = json!(completion.stats);
            chunks.push(chunk);
        }
        chunks
    }

    fn closing_chunk(&self, stats: &Stats) -> Value {
        let finish = FinishReason::from(stats.stop_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completions => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish})
            }
        };
        self.envelope(true, json!([choice]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<OpenAiRequest> {
        OpenAiRequest::from_json(body.as_bytes())
    }

    #[test]
    fn openai_defaults_and_extensions() {
        let r =
            parse(r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#).unwrap();
        r.validate(Endpoint::Chat, &GenerateRequest::default())
            .unwrap();
        let base = GenerateRequest {
            strategy: StrategyKind::SelfSpeculative,
            exit_layer: Some(Setting::Auto),
            ..Default::default()
        };
        let g = r.generate_request(&base, 100, 42);
        assert_eq!(g.temperature, 1.0);
        assert_eq!((g.max_new_tokens, g.seed), (100, 42));
        assert_eq!(g.strategy, StrategyKind::SelfSpeculative);
        assert_eq!(g.exit_layer, Some(Setting::Auto));
        let r = parse(
            r#"{"prompt": ["x"], "max_tokens": 5, "temperature": 0, "stop": "\n", "seed": 3, "strategy": "early-exit", "exit_layer": 2, "num_speculations": "auto", "top_k": 4}"#,
        )
        .unwrap();
        r.validate(Endpoint::Completions, &base).unwrap();
        assert_eq!(r.prompt_text().unwrap(), "x");
        let g = r.generate_request(&base, r.max_new_tokens().unwrap(), 42);
        assert_eq!((g.temperature, g.seed, g.top_k), (0.0, 3, 4));
        assert_eq!(g.stop, vec!["\n".to_string()]);
        assert_eq!(g.strategy, StrategyKind::EarlyExit);
        assert_eq!(g.exit_layer, Some(Setting::Fixed(2)));
        assert_eq!(g.num_speculations, Setting::Auto);
    }

    #[test]
    fn messages_accept_text_parts_and_the_developer_role() {
        let r = parse(
            r#"{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "assistant", "content": "c", "refusal": null}]}"#,
        )
        .unwrap();
        let m = r.messages().unwrap();
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", "ab")
        );
        assert_eq!(m[1].content, "c");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let base = GenerateRequest::default();
        let cases = [
            (
                r#"{"messages": [], "frobnicate": true}"#,
                Endpoint::Chat,
                "unknown field `frobnicate`",
            ),
            (
                r#"{"messages": []}"#,
                Endpoint::Chat,
                "at least one message",
            ),
            (r#"{}"#, Endpoint::Chat, "`messages` is required"),
            (
                r#"{"prompt": "x"}"#,
                Endpoint::Chat,
                "`prompt` belongs to /v1/completions",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}]}"#,
                Endpoint::Completions,
                "`messages` belongs",
            ),
            (
                r#"{"prompt": ["a", "b"]}"#,
                Endpoint::Completions,
                "a list of 2 prompts",
            ),
            (
                r#"{"prompt": "x", "n": 2}"#,
                Endpoint::Completions,
                "`n` must be 1",
            ),
            (
                r#"{"prompt": "x", "temperature": 2.5}"#,
                Endpoint::Completions,
                "`temperature` must be in [0, 2]",
            ),
            (
                r#"{"prompt": "x", "max_tokens": 0}"#,
                Endpoint::Completions,
                "at least 1",
            ),
            (
                r#"{"prompt": "x", "top_p": 0}"#,
                Endpoint::Completions,
                "top_p",
            ),
            (
                r#"{"prompt": "x", "presence_penalty": 3}"#,
                Endpoint::Completions,
                "presence",
            ),
            (
                r#"{"prompt": "x", "num_speculations": 0}"#,
                Endpoint::Completions,
                "num_speculations",
            ),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                Endpoint::Chat,
                "`image_url`",
            ),
            (
                r#"{"prompt": "x", "max_tokens": -1}"#,
                Endpoint::Completions,
                "max_tokens",
            ),
            (
                r#"{"prompt": "x", "logprobs": 2}"#,
                Endpoint::Completions,
                "`logprobs` is not supported",
            ),
            (
                r#"{"prompt": "x", "echo": true}"#,
                Endpoint::Completions,
                "`echo`",
            ),
            (
                r#"{"prompt": "x", "best_of": 3}"#,
                Endpoint::Completions,
                "`best_of`",
            ),
            (
                r#"{"prompt": "x", "logit_bias": {"1": 5}}"#,
                Endpoint::Completions,
                "`logit_bias`",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}"#,
                Endpoint::Chat,
                "`tools`",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}"#,
                Endpoint::Chat,
                "`tool_choice`",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}"#,
                Endpoint::Chat,
                "`response_format`",
            ),
            (
                r#"{"prompt": "x", "store": true}"#,
                Endpoint::Completions,
                "`store`",
            ),
            (
                r#"{"prompt": "x", "functions": []}"#,
                Endpoint::Completions,
                "unknown field `functions`",
            ),
        ];
        for (body, endpoint, expected) in cases {
            let err = parse(body)
                .and_then(|r| r.validate(endpoint, &base))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    /// What tools built on OpenAI's clients send by default is accepted.
    #[test]
    fn options_that_ask_for_nothing_are_accepted() {
        let r = parse(
            r#"{"messages": [{"role": "user", "content": "x"}], "logprobs": false, "top_logprobs": null, "echo": false, "best_of": 1, "suffix": "", "logit_bias": {}, "tools": [], "tool_choice": "auto", "parallel_tool_calls": true, "response_format": {"type": "text"}, "store": false, "metadata": {"a": "b"}, "service_tier": "auto", "n": 1, "user": "u"}"#,
        )
        .unwrap();
        r.validate(Endpoint::Chat, &GenerateRequest::default())
            .unwrap();
    }

    /// A server-wide `auto` exit layer is for self-speculative requests; an early-exit request
    /// without a layer gets the model's default rather than an error.
    #[test]
    fn an_auto_default_leaves_early_exit_to_the_model() {
        let base = GenerateRequest {
            strategy: StrategyKind::SelfSpeculative,
            exit_layer: Some(Setting::Auto),
            ..Default::default()
        };
        let early = parse(r#"{"prompt": "x", "strategy": "early-exit"}"#).unwrap();
        assert_eq!(early.generate_request(&base, 1, 0).exit_layer, None);
        let named = parse(r#"{"prompt": "x", "strategy": "early-exit", "exit_layer": 3}"#).unwrap();
        assert_eq!(
            named.generate_request(&base, 1, 0).exit_layer,
            Some(Setting::Fixed(3))
        );
        let speculative = parse(r#"{"prompt": "x"}"#).unwrap();
        assert_eq!(
            speculative.generate_request(&base, 1, 0).exit_layer,
            Some(Setting::Auto)
        );
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(FinishReason::from(StopReason::Eos), FinishReason::Stop);
        assert_eq!(
            FinishReason::from(StopReason::StopString),
            FinishReason::Stop
        );
        assert_eq!(
            FinishReason::from(StopReason::MaxNewTokens),
            FinishReason::Length
        );
        assert_eq!(
            FinishReason::from(StopReason::Cancelled),
            FinishReason::Abort
        );
        assert_eq!(json!(FinishReason::Length), json!("length"));
    }
}
