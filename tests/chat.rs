//! Chat templates against Hugging Face: tests/fixtures/chat/expected.json holds what
//! transformers' `apply_chat_template` renders (text and ids) for a Llama-3.2-style and a
//! Llama-2-style template with both fixture tokenizers (tools/make_chat_fixtures.py), and the
//! conversations a template refuses.

#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{fixture, fixture_copy, layerskip};
use layerskip::{ChatTemplate, Message, Tokenizer};
use serde_json::{json, Value};
use std::path::Path;

/// The HF renderings tools/make_chat_fixtures.py wrote.
fn expected() -> Vec<Value> {
    serde_json::from_slice(&std::fs::read(fixture("chat").join("expected.json")).unwrap()).unwrap()
}

/// The fixture model `name`'s tokenizer_config.json with `template` as its `chat_template`.
fn config_with(name: &str, template: &str) -> Vec<u8> {
    let path = fixture(name).join("tokenizer_config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    config["chat_template"] = json!(template);
    serde_json::to_vec(&config).unwrap()
}

#[test]
fn templates_render_as_hugging_face_does() {
    let cases = expected();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let (mut rendered, mut refused) = (0, 0);
    for case in &cases {
        let name = format!(
            "{} with {}: {}",
            case["template"], case["tokenizer"], case["messages"]
        );
        let template_file = fixture("chat").join(case["template"].as_str().unwrap());
        let template = std::fs::read_to_string(template_file).unwrap();
        let model = case["tokenizer"].as_str().unwrap();
        let chat = ChatTemplate::from_config(Some(&config_with(model, &template)), None)
            .unwrap()
            .unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let variables = case["variables"].as_object().unwrap();
        let result = chat.render(&messages, add, variables);
        if let Some(error) = case["error"].as_str() {
            let e = result.expect_err(&name).to_string();
            assert!(e.contains(error), "{name}: {e}");
            refused += 1;
            continue;
        }
        let text = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}");
        let tokenizer_json = std::fs::read(fixture(model).join("tokenizer.json")).unwrap();
        let tokenizer = Tokenizer::from_bytes(&tokenizer_json).unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tokenizer.encode_rendered(&text).unwrap(), ids, "{name}");
        rendered += 1;
    }
    assert!(
        rendered >= 28 && refused >= 2,
        "{rendered} rendered, {refused} refused"
    );
}

/// `layerskip generate --chat --system S --prompt P` feeds the model exactly the ids HF's
/// `apply_chat_template` gives for [system S, user P] with the generation prompt, with the
/// template in tokenizer_config.json or in chat_template.jinja; a model without a template is a
/// named error.
#[test]
fn generate_chat_uses_the_template() {
    let dir = fixture_copy("llama2_tiny", "chat-generate");
    let run = |dir: &Path| {
        layerskip(&[
            "generate",
            "--device",
            "cpu",
            "--model",
            dir.to_str().unwrap(),
            "--chat",
            "--system",
            "  You are terse.  ",
            "--prompt",
            "What is 2 + 2?",
            "--max-new-tokens",
            "3",
            "--json",
        ])
    };
    let (ok, _, stderr) = run(&dir);
    assert!(!ok);
    assert!(
        stderr.contains("tokenizer_config.json") && stderr.contains("chat_template"),
        "{stderr}"
    );

    // transformers 5's layout: the template in chat_template.jinja, none in the config.
    let template = std::fs::read_to_string(fixture("chat").join("llama2.jinja")).unwrap();
    let mut config: Value = serde_json::from_slice(&config_with("llama2_tiny", "x")).unwrap();
    config.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("chat_template.jinja"), &template).unwrap();
    let (ok, stdout, stderr) = run(&dir);
    assert!(ok, "{stderr}");
    let from_jinja: Value = serde_json::from_str(&stdout).unwrap();
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();

    add_template(&dir);
    let (ok, stdout, stderr) = run(&dir);
    assert!(ok, "{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(from_jinja["prompt_tokens"], result["prompt_tokens"]);
    let cases = expected();
    let expected = cases
        .iter()
        .find(|c| {
            c["template"] == "llama2.jinja"
                && c["tokenizer"] == "llama2_tiny"
                && c["add_generation_prompt"] == true
                && c["messages"]
                    == json!([
                        {"role": "system", "content": "  You are terse.  "},
                        {"role": "user", "content": "What is 2 + 2?"},
                    ])
        })
        .unwrap();
    assert_eq!(result["prompt_tokens"], expected["ids"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Gives the copy the Llama-2 chat template.
fn add_template(dir: &Path) {
    let template = std::fs::read_to_string(fixture("chat").join("llama2.jinja")).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        config_with("llama2_tiny", &template),
    )
    .unwrap();
}

/// `layerskip chat` over piped input: every line a turn, replies streamed, `/stats` and
/// `/reset` (an unknown command is no turn); later turns keep the conversation's KV cache, and the replies are the same as
/// when every turn computes its whole prompt.
#[test]
fn chat_command_keeps_the_conversation() {
    let dir = fixture_copy("llama2_tiny", "chat-command");
    add_template(&dir);
    // "/rest": a mistyped command is refused, not sent to the model as a message.
    let input =
        "Hello there.\n/stats\n/rest\nTell me more.\n/stats\n/reset\nHello there.\n/stats\n";
    let run = |extra: &[&str]| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_layerskip"))
            .args(["chat", "--device", "cpu", "--model"])
            .arg(&dir)
            .args(["--max-new-tokens", "6", "--ignore-eos"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats: Vec<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("kept in the KV cache"))
            .map(str::to_string)
            .collect();
        (String::from_utf8(out.stdout).unwrap(), stats)
    };
    let kept = |line: &str| -> usize {
        let (_, rest) = line.split_once("prompt tokens (").unwrap();
        rest.split(' ').next().unwrap().parse().unwrap()
    };
    let (replies, stats) = run(&["--strategy", "self-speculative", "--exit-layer", "1"]);
    assert_eq!(replies.lines().count(), 3, "{replies}");
    assert_eq!(stats.len(), 3, "{stats:?}");
    // The second turn keeps the first turn's prompt at least; after /reset the same first
    // message keeps what the cache still holds of it.
    assert!(kept(&stats[1]) > 10 && kept(&stats[2]) > 0, "{stats:?}");
    let (fresh, fresh_stats) = run(&[
        "--strategy",
        "self-speculative",
        "--exit-layer",
        "1",
        "--no-prefix-reuse",
    ]);
    assert_eq!(replies, fresh);
    assert!(fresh_stats.iter().all(|l| kept(l) == 0), "{fresh_stats:?}");
    // The first and the post-reset replies answer the same conversation.
    let lines: Vec<&str> = replies.lines().collect();
    assert_eq!(lines[0], lines[2]);

    // A template this runtime cannot parse: raw prompts still work, chat names the problem.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        config_with("llama2_tiny", "{% if %}"),
    )
    .unwrap();
    let model = dir.to_str().unwrap();
    let (ok, _, stderr) = layerskip(&[
        "generate",
        "--device",
        "cpu",
        "--max-new-tokens",
        "2",
        "--prompt",
        "x",
        "--model",
        model,
    ]);
    assert!(ok, "{stderr}");
    let chat = || layerskip(&["chat", "--device", "cpu", "--model", model]);
    let (ok, _, stderr) = chat();
    assert!(!ok);
    assert!(
        stderr.contains("tokenizer_config.json") && stderr.contains("chat_template"),
        "{stderr}"
    );

    // A model without a template: the command refuses at once, naming the file.
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    let (ok, _, stderr) = chat();
    assert!(!ok);
    assert!(stderr.contains("tokenizer_config.json"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
