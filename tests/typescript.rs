//! The TypeScript declarations the wasm package ships (the `typescript_custom_section` in
//! src/wasm/mod.rs) checked against the JSON the Rust types serialize to: every field a result
//! carries is declared, and every declared field exists.
#![cfg(not(target_arch = "wasm32"))]

use layerskip::adaptive::{AdaptiveStats, Costs};
use layerskip::{Completion, LensExit, LogitLens, Stats};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn declarations() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/wasm/mod.rs");
    let text = std::fs::read_to_string(path).unwrap();
    // Comments may hold colons and braces of their own.
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        rest = &rest[i + rest[i..].find("*/").unwrap() + 2..];
    }
    out.push_str(rest);
    out
}

/// The top-level fields of an object type's body (after its `{`, up to its `}`), each with the
/// body of its inline object type, if it is one.
fn fields(body: &str) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let (mut depth, mut word, mut i) = (0, String::new(), 0);
    let chars: Vec<char> = body.chars().collect();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' | '(' | '<' => depth += 1,
            '}' | ']' | ')' | '>' if depth == 0 => break,
            '}' | ']' | ')' | '>' => depth -= 1,
            ':' if depth == 0 && !word.is_empty() => {
                let rest: String = chars[i + 1..].iter().collect();
                let nested = rest
                    .trim_start()
                    .strip_prefix('{')
                    .map(|inner| inner.to_string());
                out.insert(word.trim_end_matches('?').to_string(), nested);
            }
            _ => {}
        }
        if c.is_alphanumeric() || c == '_' || (c == '?' && !word.is_empty()) {
            word.push(c);
        } else if !c.is_whitespace() || !word.ends_with('?') {
            word.clear();
        }
        i += 1;
    }
    out
}

fn interface(ts: &str, name: &str) -> BTreeMap<String, Option<String>> {
    let head = format!("export interface {name} {{");
    let at = ts
        .find(&head)
        .unwrap_or_else(|| panic!("no `export interface {name}`"));
    fields(&ts[at + head.len()..])
}

fn check(what: &str, declared: &BTreeMap<String, Option<String>>, value: &Value) {
    let object = value.as_object().unwrap();
    let keys: Vec<&String> = object.keys().collect();
    let names: Vec<&String> = declared.keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        names, sorted,
        "{what}: declared fields vs serialized fields"
    );
    for (name, nested) in declared {
        if let (Some(body), Some(inner)) = (nested, object.get(name)) {
            if inner.is_object() {
                check(&format!("{what}.{name}"), &fields(body), inner);
            }
        }
    }
}

fn full_stats() -> Stats {
    Stats {
        adaptive: Some(AdaptiveStats {
            costs: Some(Costs {
                submit_ms: 1.0,
                layer_ms: 1.0,
                head_ms: 1.0,
                row_fraction: 0.5,
            }),
            ..AdaptiveStats::default()
        }),
        ..Stats::default()
    }
}

#[test]
fn stats_are_declared_as_serialized() {
    let ts = declarations();
    check("Stats", &interface(&ts, "Stats"), &json!(full_stats()));
}

#[test]
fn generate_result_is_a_completion() {
    let ts = declarations();
    let completion = Completion {
        prompt_tokens: vec![1],
        tokens: vec![2],
        text: "x".into(),
        stats: full_stats(),
    };
    check(
        "GenerateResult",
        &interface(&ts, "GenerateResult"),
        &json!(completion),
    );
}

#[test]
fn logit_lens_is_declared_as_serialized() {
    let ts = declarations();
    let lens = LogitLens {
        prompt_tokens: vec![1],
        exits: vec![LensExit {
            layer: 1,
            logits: None,
            top: Some(vec![(3, 0.5, "a".into())]),
        }],
    };
    let value = json!(lens);
    let declared = interface(&ts, "LogitLens");
    check("LogitLens", &declared, &value);
    let exit = declared["exits"]
        .as_ref()
        .expect("exits: an inline object type");
    check("LogitLens.exits", &fields(exit), &value["exits"][0]);
}

/// The parser itself, on a declaration with optional, nested and commented fields.
#[test]
fn fields_are_read_at_the_top_level() {
    let f = fields("a: number; b?: { c: string; d: number[] } | null; e: [number, string][]; }");
    let names: Vec<&str> = f.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "e"]);
    let nested = fields(f["b"].as_deref().unwrap());
    assert_eq!(
        nested.keys().map(String::as_str).collect::<Vec<_>>(),
        ["c", "d"]
    );
}
