//! Chat templates against Hugging Face: tests/fixtures/chat/expected.json holds what
//! transformers' `apply_chat_template` renders (text and ids) for a Llama-3.2-style and a
//! Llama-2-style template with both fixture tokenizers (tools/make_chat_fixtures.py), and the
//! conversations a template refuses.

use layerskip::{ChatTemplate, Message, Tokenizer};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture's tokenizer_config.json with `template` as its `chat_template`.
fn config_with(fixture: &str, template: &str) -> Vec<u8> {
    let path = fixtures().join(fixture).join("tokenizer_config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    config["chat_template"] = json!(template);
    serde_json::to_vec(&config).unwrap()
}

#[test]
fn templates_render_as_hugging_face_does() {
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixtures().join("chat/expected.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let (mut rendered, mut refused) = (0, 0);
    for case in &cases {
        let name = format!(
            "{} with {}: {}",
            case["template"], case["tokenizer"], case["messages"]
        );
        let template_file = fixtures()
            .join("chat")
            .join(case["template"].as_str().unwrap());
        let template = std::fs::read_to_string(template_file).unwrap();
        let fixture = case["tokenizer"].as_str().unwrap();
        let chat = ChatTemplate::from_config(&config_with(fixture, &template))
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
        let tokenizer_json =
            std::fs::read(fixtures().join(fixture).join("tokenizer.json")).unwrap();
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
/// `apply_chat_template` gives for [system S, user P] with the generation prompt; a model
/// without a template is a named error.
#[test]
fn generate_chat_uses_the_template() {
    let dir = std::env::temp_dir().join(format!("layerskip-chat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let source = fixtures().join("llama2_tiny");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let run = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_layerskip"))
            .args(["generate", "--device", "cpu", "--model"])
            .arg(dir)
            .args([
                "--chat",
                "--system",
                "  You are terse.  ",
                "--prompt",
                "What is 2 + 2?",
                "--max-new-tokens",
                "3",
                "--json",
            ])
            .output()
            .unwrap()
    };
    let out = run(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tokenizer_config.json") && stderr.contains("chat_template"),
        "{stderr}"
    );

    let template = std::fs::read_to_string(fixtures().join("chat/llama2.jinja")).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        config_with("llama2_tiny", &template),
    )
    .unwrap();
    let out = run(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixtures().join("chat/expected.json")).unwrap())
            .unwrap();
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
