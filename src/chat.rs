//! Chat templates: tokenizer_config.json's `chat_template` rendered as Hugging Face's
//! `apply_chat_template` renders it. HF runs Jinja2 with `trim_blocks` and `lstrip_blocks`,
//! Python's string methods (`.strip()`, `.startswith()`, ...), `raise_exception(msg)`,
//! `strftime_now(format)`, the tokenizer's `bos_token` / `eos_token`, and `tools` none; minijinja
//! with its Python compatibility layer does the same here, natively and in wasm. The rendered text
//! already holds BOS where the template puts it, so it is encoded without adding special tokens.

use crate::error::{Error, Result};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Where a model's template and special tokens come from (named in errors).
pub const CONFIG_FILE: &str = "tokenizer_config.json";
/// Where transformers 5 (and many current hub repositories) keep the template instead: when
/// present it is the template, whatever tokenizer_config.json says, as in transformers.
pub const JINJA_FILE: &str = "chat_template.jinja";

/// One message of a conversation, in the OpenAI / Hugging Face shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// "system", "user" or "assistant" (a template may accept others).
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template, compiled once at load, and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// The template as "chat", with HF's Jinja settings and functions.
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Where the template came from, for errors ("tokenizer_config.json", "chat_template.jinja",
    /// a GGUF file's `tokenizer.chat_template`).
    origin: String,
}

impl ChatTemplate {
    /// Reads tokenizer_config.json: `None` when it has no `chat_template`. The template is a
    /// string or, as HF also writes it, a list of `{"name", "template"}` of which "default" is
    /// used. `bos_token` / `eos_token` are strings or added-token objects with a `content`.
    /// `jinja` is chat_template.jinja's text, which takes the template's place.
    pub fn from_config(bytes: Option<&[u8]>, jinja: Option<String>) -> Result<Option<Self>> {
        let bad = |why: String| Error::file(CONFIG_FILE, why);
        let config: Json = match bytes {
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?
            }
            None => Json::Null,
        };
        let (source, origin) = match (jinja, config.get("chat_template")) {
            (Some(text), _) => (text, JINJA_FILE),
            (None, None | Some(Json::Null)) => return Ok(None),
            (None, Some(Json::String(s))) => (s.clone(), CONFIG_FILE),
            (None, Some(Json::Array(list))) => (
                list.iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .ok_or_else(|| {
                        bad("`chat_template` lists named templates but none named \"default\" with a string `template`".into())
                    })?
                    .to_string(),
                CONFIG_FILE,
            ),
            (None, Some(_)) => {
                return Err(bad("`chat_template` is neither a string nor a list".into()))
            }
        };
        let token = |field: &str| -> Result<String> {
            match config.get(field) {
                None | Some(Json::Null) => Ok(String::new()),
                Some(Json::String(s)) => Ok(s.clone()),
                Some(t) => t
                    .get("content")
                    .and_then(Json::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        bad(format!(
                            "`{field}` is neither a string nor a token with a `content`"
                        ))
                    }),
            }
        };
        Self::new(source, origin, token("bos_token")?, token("eos_token")?).map(Some)
    }

    /// A template from its source, compiled now; `origin` names where it came from in errors.
    pub fn new(source: String, origin: &str, bos_token: String, eos_token: String) -> Result<Self> {
        Ok(ChatTemplate {
            env: Self::environment(source, origin)?,
            bos_token,
            eos_token,
            origin: origin.to_string(),
        })
    }

    /// Compiles `source` as HF's Jinja environment would: a template that does not parse is an
    /// error when the config is read, not at the first chat.
    fn environment(source: String, origin: &str) -> Result<Environment<'static>> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", |format: String| {
            strftime(&format, crate::clock::unix_seconds())
        });
        env.add_template_owned("chat", source)
            .map_err(|e| Error::file(origin, format!("chat_template: {e:#}")))?;
        Ok(env)
    }

    /// The conversation as the model's prompt text; `add_generation_prompt` ends it with the
    /// assistant's header, as for a reply. `variables` are extra template variables (HF passes
    /// the keyword arguments of `apply_chat_template` through, e.g. `date_string`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        variables: &serde_json::Map<String, Json>,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::Invalid("a chat needs at least one message".into()));
        }
        let mut context = variables.clone();
        context.insert(
            "messages".into(),
            serde_json::to_value(messages).unwrap_or_default(),
        );
        context.insert("add_generation_prompt".into(), add_generation_prompt.into());
        context.insert("bos_token".into(), self.bos_token.clone().into());
        context.insert("eos_token".into(), self.eos_token.clone().into());
        context.insert("tools".into(), Json::Null);
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::file(&self.origin, format!("chat_template: {e:#}")))?;
        template
            .render(Value::from_serialize(&context))
            .map_err(|e| {
                match e.kind() {
                    // raise_exception: the template's own words on what it refuses.
                    ErrorKind::InvalidOperation => Error::Invalid(format!(
                        "the chat template refuses this conversation: {}",
                        e.detail().unwrap_or("(no reason given)")
                    )),
                    _ => Error::file(&self.origin, format!("chat_template: {e:#}")),
                }
            })
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// Python's `datetime.now().strftime(format)` for the directives chat templates use (UTC):
/// %d %m %Y %y %B %b %A %a %H %M %S %j %%; others are kept as written.
pub fn strftime(format: &str, unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let year_day = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year.rem_euclid(100)),
            Some('B') => out += month_name,
            Some('b') => out += &month_name[..3],
            Some('A') => out += weekday,
            Some('a') => out += &weekday[..3],
            Some('H') => out += &format!("{:02}", secs / 3600),
            Some('M') => out += &format!("{:02}", secs / 60 % 60),
            Some('S') => out += &format!("{:02}", secs % 60),
            Some('j') => out += &format!("{year_day:03}"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Year, month (1-12) and day of `days` since 1970-01-01 in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_like_python() {
        // 2024-07-26 14:05:09 UTC, a Friday: Python gives "26 Jul 2024" for "%d %b %Y".
        let t = 1_722_002_709;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %a %B %m/%y %H:%M:%S %j %% %q", t),
            "Friday Fri July 07/24 14:05:09 208 % %q"
        );
        // Leap day and the epoch.
        assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
        assert_eq!(strftime("%Y-%m-%d %A", 0), "1970-01-01 Thursday");
        for days in [-1000, 0, 59, 60, 365, 11_016, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    fn config(template: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "chat_template": template,
        }))
        .unwrap()
    }

    #[test]
    fn config_fields_are_read_or_named() {
        let t = ChatTemplate::from_config(
            Some(&config(
                "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
            )),
            None,
        )
        .unwrap()
        .unwrap();
        let text = t
            .render(&[Message::new("user", "hi")], true, &Default::default())
            .unwrap();
        assert_eq!(text, "<s>hi</s>");
        assert!(
            ChatTemplate::from_config(Some(br#"{"bos_token": "<s>"}"#), None)
                .unwrap()
                .is_none()
        );
        assert!(ChatTemplate::from_config(None, None).unwrap().is_none());
        let named = br#"{"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "d{{ messages|length }}"}]}"#;
        let t = ChatTemplate::from_config(Some(named), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "a")], false, &Default::default())
                .unwrap(),
            "d1"
        );
        for (bad, field) in [
            (
                &br#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#[..],
                "default",
            ),
            (br#"{"chat_template": 3}"#, "chat_template"),
            (br#"{"chat_template": "x", "eos_token": 5}"#, "eos_token"),
            (br#"{"chat_template": "{% if %}"}"#, "chat_template"),
            (b"{", "JSON"),
        ] {
            let e = ChatTemplate::from_config(Some(bad), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(CONFIG_FILE) && e.contains(field), "{e}");
        }
    }

    #[test]
    fn chat_template_jinja_is_the_template_when_present() {
        // transformers 5 writes the template to chat_template.jinja and none into the config;
        // where both exist the file wins, as in transformers. Special tokens still come from the
        // config.
        let jinja = Some("{{ bos_token }}[{{ messages[0].content }}]".to_string());
        for config in [
            Some(&br#"{"bos_token": "<s>"}"#[..]),
            Some(&br#"{"bos_token": "<s>", "chat_template": "old"}"#[..]),
        ] {
            let t = ChatTemplate::from_config(config, jinja.clone())
                .unwrap()
                .unwrap();
            let text = t
                .render(&[Message::new("user", "hi")], false, &Default::default())
                .unwrap();
            assert_eq!(text, "<s>[hi]");
        }
        let t = ChatTemplate::from_config(None, jinja).unwrap().unwrap();
        let text = t
            .render(&[Message::new("user", "hi")], false, &Default::default())
            .unwrap();
        assert_eq!(text, "[hi]", "no config: no special tokens");
        let e = ChatTemplate::from_config(None, Some("{% if %}".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(JINJA_FILE), "{e}");
    }

    #[test]
    fn templates_refuse_with_their_own_words() {
        let t = ChatTemplate::from_config(Some(&config(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
        )), None)
        .unwrap()
        .unwrap();
        let e = t
            .render(
                &[Message::new("assistant", "x")],
                false,
                &Default::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("first must be user"), "{e}");
        let e = t
            .render(&[], false, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one message"), "{e}");
    }

    #[test]
    fn strftime_now_gives_todays_date() {
        let t = ChatTemplate::from_config(Some(&config("{{ strftime_now('%Y-%m-%d') }}")), None)
            .unwrap()
            .unwrap();
        let text = t
            .render(&[Message::new("user", "x")], false, &Default::default())
            .unwrap();
        assert_eq!(text, strftime("%Y-%m-%d", crate::clock::unix_seconds()));
    }
}
