//! The `layerskip` binary end to end on the committed fixtures: its JSON output agrees with
//! Hugging Face, the embedded default model works without --model, and errors are clear.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let (ok, stdout, stderr) = layerskip(args);
    assert!(ok, "{args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

#[test]
fn generate_and_logits_json_agree_with_hugging_face() {
    for name in ["llama2_tiny", "llama32_tiny"] {
        let dir = fixture(name);
        let dir = dir.to_str().unwrap();
        let r = reference(name);
        let p = &r["prompts"][1];
        let prompt = p["text"].as_str().unwrap();
        let runs = [
            ["autoregressive", "1", "gpu"],
            ["self-speculative", "2", "gpu"],
            ["self-speculative", "2", "cpu"],
        ];
        for strategy in runs {
            let out = json(&[
                "generate",
                "--model",
                dir,
                "--prompt",
                prompt,
                "--max-new-tokens",
                "12",
                "--ignore-eos",
                "--json",
                "--strategy",
                strategy[0],
                "--exit-layer",
                strategy[1],
                "--device",
                strategy[2],
            ]);
            assert_eq!(out["stats"]["backend"], strategy[2]);
            assert_eq!(out["prompt_tokens"], p["input_ids"], "{name}");
            assert_eq!(out["tokens"], p["greedy"]["tokens"], "{name} {strategy:?}");
            assert_eq!(out["text"], p["greedy"]["text"], "{name} {strategy:?}");
            assert!(out["stats"]["tokens_per_second"].as_f64().unwrap() > 0.0);
        }
        let out = json(&[
            "logits",
            "--model",
            dir,
            "--prompt",
            prompt,
            "--kv-cache",
            "f32",
            "--device",
            "gpu",
            "--json",
        ]);
        let exits = out["exits"].as_array().unwrap();
        assert_eq!(
            exits.len(),
            r["num_hidden_layers"].as_u64().unwrap() as usize
        );
        for (l, exit) in exits.iter().enumerate() {
            assert_eq!(exit["layer"], l + 1);
            let got: Vec<f32> = exit["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let want: Vec<f32> = p["exit_logits"][l]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert!(max_abs_diff(&got, &want) < 2e-4, "{name} layer {}", l + 1);
        }
        let top = json(&[
            "logits", "--model", dir, "--prompt", prompt, "--top", "3", "--json",
        ]);
        assert_eq!(top["exits"][0]["top"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn the_embedded_default_model_needs_no_model_flag() {
    let run = |extra: &[&str]| {
        let base = [
            "generate",
            "--prompt",
            "def fibonacci(n):",
            "--max-new-tokens",
            "8",
            "--ignore-eos",
            "--json",
        ];
        json(&base.iter().chain(extra).copied().collect::<Vec<_>>())
    };
    let out = run(&["--strategy", "self-speculative", "--device", "gpu"]);
    assert_eq!(out["tokens"].as_array().unwrap().len(), 8);
    assert_eq!(out["stats"]["strategy"], "self-speculative");
    let cpu = run(&["--device", "cpu"]);
    assert_eq!(
        cpu["tokens"], out["tokens"],
        "GPU self-speculative equals CPU autoregressive"
    );
}

/// Without --device the binary picks a hardware GPU, else the CPU backend (a software adapter
/// counts as none), and says which and why on the first line of stderr and in the JSON.
#[test]
fn the_backend_is_chosen_and_reported() {
    let (ok, stdout, stderr) = layerskip(&["info", "--json"]);
    assert!(ok, "{stderr}");
    let info: Value = serde_json::from_str(&stdout).unwrap();
    let software = ["llvmpipe", "swiftshader", "lavapipe"]
        .iter()
        .any(|s| info["backend_reason"].as_str().unwrap().contains(s));
    let expected = if software
        || info["backend_reason"]
            .as_str()
            .unwrap()
            .starts_with("no GPU")
    {
        "cpu"
    } else {
        "gpu"
    };
    assert_eq!(info["backend"], expected, "{info}");
    let (ok, _, stderr) = layerskip(&["generate", "--prompt", "x", "--max-new-tokens", "2"]);
    assert!(ok, "{stderr}");
    let first = stderr.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("backend: {expected} (")),
        "{first}"
    );
    let (ok, _, stderr) = layerskip(&[
        "generate",
        "--prompt",
        "x",
        "--max-new-tokens",
        "2",
        "--device",
        "gpu",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.starts_with("backend: gpu (--device gpu: "),
        "{stderr}"
    );
}

#[test]
fn bench_reports_speedups_and_equality() {
    let dir = fixture("llama32_tiny");
    let out = json(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--exit-layer",
        "2",
        "--num-speculations",
        "3",
        "--max-new-tokens",
        "8",
        "--repetitions",
        "1",
        "--draft-confidence",
        "0.5",
        "--json",
    ]);
    assert_eq!(out["self_speculative_equals_autoregressive"], true);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["speedup"], 1.0);
    assert!(results[2]["acceptance_rate"].as_f64().is_some());
    assert_eq!(
        results[2]["submits_per_round"], 1.0,
        "greedy rounds are one submit"
    );
}

/// `bench --profile` times every kind of dispatch on the GPU (lavapipe has timestamp queries)
/// and counts the bytes each reads per decoded token from the model's own op list: the
/// products read their matrices once per token, exactly.
#[test]
fn bench_profiles_gpu_time_and_bytes_per_kind_of_op() {
    let dir = fixture("llama32_tiny");
    let out = json(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--max-new-tokens",
        "4",
        "--repetitions",
        "1",
        "--device",
        "gpu",
        "--profile",
        "--json",
    ]);
    let bytes = &out["bytes"];
    assert_eq!(bytes["timed"], true);
    let kind = |name: &str| {
        bytes["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kind"] == name)
            .unwrap()
            .clone()
    };
    // llama32_tiny: 5 layers of q|k|v (96 x (80 + 40 + 40)) and gate|up (96 x 320) in bf16, each
    // row padded to 3 groups of 32 (192 bytes); the tied head is the 397 x 96 embedding.
    assert_eq!(kind("qkv")["bytes_per_token"], 5 * 160 * 192);
    assert_eq!(kind("gate_up")["bytes_per_token"], 5 * 320 * 192);
    assert_eq!(kind("head")["bytes_per_token"], 397 * 192);
    for name in ["qkv", "attention", "o", "gate_up", "down", "head", "argmax"] {
        assert!(
            kind(name)["gpu_ms_per_token"].as_f64().unwrap() > 0.0,
            "{name}"
        );
    }
}

#[test]
fn sweep_writes_a_csv_grid() {
    let dir = fixture("llama2_tiny");
    let csv = std::env::temp_dir().join(format!("layerskip-sweep-{}.csv", std::process::id()));
    let (ok, stdout, stderr) = layerskip(&[
        "sweep",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--exit-layers",
        "1..2",
        "--num-speculations",
        "1,3",
        "--max-new-tokens",
        "6",
        "--repetitions",
        "1",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for measure in [
        "median of runs: best pair exit layer",
        "whole set: best pair exit layer",
    ] {
        assert!(stdout.contains(measure), "{stdout}");
    }
    assert!(stdout.contains("% of the best pair"), "{stdout}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(
        text.lines().count(),
        6,
        "header, a 2 x 2 grid and the auto row: {text}"
    );
    assert!(
        text.lines().last().unwrap().starts_with("auto,auto,"),
        "{text}"
    );
    let _ = std::fs::remove_file(csv);
}

/// `--exit-layer auto --num-speculations auto` in bench: greedy output still equals
/// autoregressive, and the JSON carries the histograms, estimates and costs. The fixture is not
/// trained for early exit, so the warm-up takes 100 plain steps before measuring costs, which
/// the timed runs then start with.
#[test]
fn bench_reports_adaptive_choices() {
    let dir = fixture("llama32_tiny");
    let out = json(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--exit-layer",
        "auto",
        "--num-speculations",
        "auto",
        "--max-new-tokens",
        "110",
        "--repetitions",
        "1",
        "--json",
    ]);
    assert_eq!(out["self_speculative_equals_autoregressive"], true);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results[2]["strategy"], "self-speculative E=auto D=auto");
    let a = &results[2]["adaptive"];
    let rounds: u64 = a["exit_layers"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(rounds > 0 || a["depths"]["0"].as_u64().unwrap() > 0, "{a}");
    for estimates in ["acceptance", "acceptance_in_streak"] {
        assert_eq!(
            a[estimates].as_array().unwrap().len(),
            4,
            "exit layers 1..4 of 5: {a}"
        );
    }
    assert!(a["costs"]["layer_ms"].as_f64().unwrap() > 0.0, "{a}");
    // Early exit has no auto: it uses the default layer.
    assert!(results[1]["strategy"]
        .as_str()
        .unwrap()
        .starts_with("early-exit E="));
}

/// `vocab-stats` counts a text's tokens into token_frequencies.json; a model folder holding it
/// drafts over that many ids with `--draft-vocab`, and the output is unchanged.
#[test]
fn vocab_stats_feed_the_draft_vocabulary() {
    let dir = fixture_copy("llama32_tiny", "vocab");
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "the cat sat on the mat. the dog sat on the log.\n".repeat(20),
    )
    .unwrap();
    let out_file = dir.join("token_frequencies.json");
    let (ok, stdout, stderr) = layerskip(&[
        "vocab-stats",
        "--model",
        dir.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ids cover"), "{stdout}");
    let counts: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    let ids = counts["ids"].as_array().unwrap();
    let total: u64 = counts["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(total, counts["tokens"].as_u64().unwrap());
    assert!(!ids.is_empty());
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "12",
            "--ignore-eos",
            "--json",
            "--device",
            "cpu",
        ];
        args.extend(extra);
        json(&args)
    };
    let plain = generate(&["--strategy", "autoregressive"]);
    for extra in [
        &["--strategy", "self-speculative", "--draft-vocab", "64"][..],
        &[
            "--strategy",
            "self-speculative",
            "--draft-vocab",
            "8",
            "--exit-layer",
            "auto",
        ][..],
    ] {
        let drafted = generate(extra);
        assert_eq!(drafted["tokens"], plain["tokens"], "{extra:?}");
    }
    // bench compares drafting over the draft vocabulary with the full head in one run; with a
    // confidence cut-off drafting is timed on its own.
    let out = json(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "the cat",
        "--max-new-tokens",
        "8",
        "--repetitions",
        "1",
        "--device",
        "cpu",
        "--draft-vocab",
        "64",
        "--draft-confidence",
        "0",
        "--json",
    ]);
    assert_eq!(out["self_speculative_equals_autoregressive"], true);
    let names: Vec<&str> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["strategy"].as_str().unwrap())
        .collect();
    assert!(
        names[2].ends_with("vocab 64") && names[4].ends_with("full vocab"),
        "{names:?}"
    );
    assert!(
        out["results"][3]["draft_ms_per_drafted_token"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let (ok, _, stderr) = layerskip(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--draft-vocab",
        "100000",
    ]);
    assert!(
        !ok && stderr.contains("--draft-vocab must be in 1..=397"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_are_clear() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--model", "/nonexistent/model"],
            "/nonexistent/model: no such model folder",
        ),
        (
            &["--strategy", "early-exit", "--exit-layer", "99"],
            "exit layer 99 is outside 1..=8",
        ),
        (
            &["--max-context", "16", "--max-new-tokens", "64"],
            "context holds 16",
        ),
    ];
    for (extra, expected) in cases {
        let args: Vec<&str> = ["generate", "--prompt", "x"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        let (ok, _, stderr) = layerskip(&args);
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }
}
