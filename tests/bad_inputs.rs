//! Every kind of bad input gets an error that says what is wrong and where, never a panic, never
//! silent garbage, and never a read outside the model folder. Checkpoints are built in the test
//! from the llama32_tiny fixture (bf16, tied, one file) and llama2_tiny (f32, three shards), and
//! loaded on both backends where the check is backend-independent.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::gpu::GpuOptions;
use layerskip::{Device, DirFiles, Error, GenerateRequest, MemoryFiles, Model};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

type Tensor = (String, String, Vec<usize>, Vec<u8>);

/// A fixture in memory: its small files, and its weights as (name, dtype, shape, bytes) per shard.
#[derive(Clone)]
struct Checkpoint {
    files: Vec<(String, Vec<u8>)>,
    shards: Vec<(String, Vec<Tensor>)>,
}

fn read_tensors(path: &Path) -> Vec<Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

fn fixture_checkpoint(name: &str) -> Checkpoint {
    let dir = fixture(name);
    let mut files = vec![];
    let mut shards = vec![];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file.ends_with(".safetensors") {
            shards.push((file, read_tensors(&path)));
        } else if file != "reference.json" {
            files.push((file, std::fs::read(&path).unwrap()));
        }
    }
    shards.sort();
    Checkpoint { files, shards }
}

/// The safetensors layout: 8-byte header length, JSON header, data.
fn safetensors_bytes(tensors: &[Tensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    with_header(&Value::Object(header).to_string(), data)
}

fn with_header(header: &str, data: Vec<u8>) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

impl Checkpoint {
    fn llama32() -> Self {
        fixture_checkpoint("llama32_tiny")
    }
    fn llama2() -> Self {
        fixture_checkpoint("llama2_tiny")
    }

    fn tensor(&mut self, name: &str) -> &mut Tensor {
        self.shards
            .iter_mut()
            .flat_map(|(_, t)| t.iter_mut())
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn file(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.files.iter().any(|(n, _)| n == name) {
            self.files.push((name.into(), vec![]));
        }
        &mut self.files.iter_mut().find(|(n, _)| n == name).unwrap().1
    }

    fn json(&mut self, name: &str) -> Value {
        serde_json::from_slice(self.file(name)).unwrap()
    }

    fn set_json(&mut self, name: &str, value: &Value) {
        *self.file(name) = value.to_string().into_bytes();
    }

    /// Edits one field of config.json.
    fn config(mut self, key: &str, value: Value) -> Self {
        let mut c = self.json("config.json");
        c[key] = value;
        self.set_json("config.json", &c);
        self
    }

    /// Every file, the shards serialized.
    fn all_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = self.files.clone();
        for (name, tensors) in &self.shards {
            out.push((name.clone(), safetensors_bytes(tensors)));
        }
        out
    }

    fn memory(&self) -> MemoryFiles {
        memory(self.all_files())
    }

    /// Writes the checkpoint to a fresh folder.
    fn write(&self, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        for (name, bytes) in self.all_files() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn memory(files: Vec<(String, Vec<u8>)>) -> MemoryFiles {
    let mut m = MemoryFiles::default();
    for (name, bytes) in files {
        m.0.insert(name, Cow::Owned(bytes));
    }
    m
}

fn devices() -> [Device; 2] {
    [cpu(), Device::Gpu(GpuOptions::default())]
}

fn load(files: &impl layerskip::Files, device: &Device, context: usize) -> Result<Model, Error> {
    pollster::block_on(Model::load(
        files,
        &options(device.clone(), context),
        |_| {},
    ))
}

/// Loads on both backends and checks the error mentions every part of `expected`.
fn assert_error(files: &impl layerskip::Files, expected: &[&str]) {
    for device in devices() {
        let err = match load(files, &device, 64) {
            Ok(_) => panic!("{device:?}: loading should fail with {expected:?}"),
            Err(e) => e.to_string(),
        };
        assert!(!err.contains('\n'), "one line: {err}");
        for part in expected {
            assert!(
                err.contains(part),
                "{device:?}: {err:?} should mention {part:?}"
            );
        }
    }
}

/// Runs each case; returns how many there were, for the report.
fn cases(class: &str, cases: Vec<(Checkpoint, Vec<&str>)>) {
    let n = cases.len();
    for (checkpoint, expected) in cases {
        assert_error(&checkpoint.memory(), &expected);
    }
    println!("{class}: {n} cases");
}

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("layerskip-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_unmodified_fixtures_load() {
    for c in [Checkpoint::llama32(), Checkpoint::llama2()] {
        for device in devices() {
            load(&c.memory(), &device, 64).unwrap();
        }
    }
}

#[test]
fn safetensors_files_are_validated_as_the_format_specifies() {
    let shard = "model-00001-of-00003.safetensors";
    let raw = |f: &dyn Fn(&mut Vec<Tensor>) -> Vec<u8>| {
        let mut c = Checkpoint::llama32();
        let bytes = f(&mut c.shards[0].1);
        c.shards.clear();
        *c.file("model.safetensors") = bytes;
        c
    };
    let mut list = vec![
        (
            raw(&|t| {
                let mut b = safetensors_bytes(t);
                b.truncate(b.len() - 100);
                b
            }),
            vec!["model.safetensors", "truncated"],
        ),
        (
            raw(&|t| {
                let mut b = safetensors_bytes(t);
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            }),
            vec!["model.safetensors", "header length"],
        ),
        (
            raw(&|t| {
                let mut b = safetensors_bytes(t);
                b[..8].copy_from_slice(&16u64.to_le_bytes());
                b
            }),
            vec!["model.safetensors", "not valid JSON"],
        ),
        (
            raw(&|_| vec![1, 2, 3]),
            vec!["model.safetensors", "too short"],
        ),
        // The length prefix one byte short of a space-padded header: the JSON still parses and
        // every tensor would be read one byte early.
        (
            raw(&|t| {
                let mut b = safetensors_bytes(t);
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                b.splice(8 + n..8 + n, *b"  ");
                b[..8].copy_from_slice(&(n as u64 + 1).to_le_bytes());
                b
            }),
            vec!["model.safetensors", "not covered by any tensor"],
        ),
        // Overlapping offsets: two tensors reading the same bytes.
        (
            raw(&|t| {
                let mut b = safetensors_bytes(t);
                let header =
                    header_of(&b).replacen("\"data_offsets\":[0,", "\"data_offsets\":[2,", 1);
                b = with_header(&header, data_of(&b));
                b
            }),
            vec!["model.safetensors", "data_offsets"],
        ),
        // Offsets that wrap around 2^64 to alias the header.
        (
            raw(&|t| {
                let b = safetensors_bytes(t);
                let first = &t[0];
                let end = first.3.len();
                let header = header_of(&b).replacen(
                    &format!("\"data_offsets\":[0,{end}]"),
                    &format!(
                        "\"data_offsets\":[18446744073709551600,{}]",
                        (end as u64).wrapping_sub(16)
                    ),
                    1,
                );
                with_header(&header, data_of(&b))
            }),
            vec!["model.safetensors", "data_offsets"],
        ),
        // A shape whose byte size overflows to 0.
        (
            raw(&|t| {
                t.push(("zz".into(), "F32".into(), vec![1 << 62, 16], vec![]));
                safetensors_bytes(t)
            }),
            vec!["model.safetensors", "`zz`", "overflows"],
        ),
        // The same name twice in one header.
        (
            raw(&|t| {
                let b = safetensors_bytes(t);
                let h = header_of(&b);
                let extra = format!(
                    ",\"model.norm.weight\":{}}}",
                    &json!({"dtype": "BF16", "shape": [0], "data_offsets": [0, 0]})
                );
                with_header(&format!("{}{extra}", &h[..h.len() - 1]), data_of(&b))
            }),
            vec!["model.safetensors", "`model.norm.weight` appears twice"],
        ),
    ];
    // Sharded: a tensor in two shards, the index pointing at the wrong shard, the index naming a
    // tensor no shard holds, and a shard holding a tensor the index does not list.
    let mut twice = Checkpoint::llama2();
    let norm = twice.tensor("model.norm.weight").clone();
    twice.shards[0].1.push(norm);
    list.push((twice, vec!["model.norm.weight", "is also in"]));
    let mut wrong = Checkpoint::llama2();
    let mut index = wrong.json("model.safetensors.index.json");
    index["weight_map"]["lm_head.weight"] = json!(shard);
    wrong.set_json("model.safetensors.index.json", &index);
    list.push((
        wrong,
        vec![
            "model.safetensors.index.json",
            "`lm_head.weight`",
            "but it is in",
        ],
    ));
    let mut ghost = Checkpoint::llama2();
    let mut index = ghost.json("model.safetensors.index.json");
    index["weight_map"]["model.ghost"] = json!(shard);
    ghost.set_json("model.safetensors.index.json", &index);
    list.push((ghost, vec!["`model.ghost`", "does not hold it"]));
    let mut unlisted = Checkpoint::llama2();
    unlisted.shards[1]
        .1
        .push(("extra".into(), "F32".into(), vec![1], vec![0; 4]));
    list.push((unlisted, vec!["does not list `extra`"]));
    cases("safetensors validation", list);
}

fn header_of(b: &[u8]) -> String {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    String::from_utf8(b[8..8 + n].to_vec()).unwrap()
}

fn data_of(b: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

/// Index entries that try to leave the model folder are refused by name, in memory and on disk,
/// before any file is opened: the outside file's contents never show up in the error.
#[test]
fn file_access_is_confined_to_the_model_folder() {
    let tmp = TempDir::new("confined");
    let outside = tmp.0.join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("x.safetensors"), b"SECRET-OUTSIDE-BYTES").unwrap();
    let model = tmp.0.join("model");
    let mut n = 0;
    for name in [
        "../elsewhere/x.safetensors",
        "/etc/passwd",
        "..",
        "sub/model.safetensors",
        "C:\\x.safetensors",
    ] {
        let mut c = Checkpoint::llama2();
        let mut index = c.json("model.safetensors.index.json");
        index["weight_map"]["lm_head.weight"] = json!(name);
        c.set_json("model.safetensors.index.json", &index);
        assert_error(
            &c.memory(),
            &["model.safetensors.index.json", "not a plain file name"],
        );
        c.write(&model);
        for device in devices() {
            let err = load(&DirFiles::new(&model).unwrap(), &device, 64)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("not a plain file name"), "{name}: {err}");
            assert!(!err.contains("SECRET") && !err.contains("root:"), "{err}");
        }
        n += 1;
    }

    // A shard that is a symbolic link leading out of the folder, to a FIFO: opening it would
    // block forever, so the test only finishes if nothing outside is opened.
    let fifo = outside.join("fifo.safetensors");
    make_fifo(&fifo);
    let c = Checkpoint::llama32();
    c.write(&model);
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(&fifo, model.join("model.safetensors")).unwrap();
    assert_error(
        &DirFiles::new(&model).unwrap(),
        &["model.safetensors", "leads outside the model folder"],
    );
    // A FIFO named config.json inside the folder.
    c.write(&model);
    std::fs::remove_file(model.join("config.json")).unwrap();
    make_fifo(&model.join("config.json"));
    assert_error(
        &DirFiles::new(&model).unwrap(),
        &["config.json", "not a regular file"],
    );
    // JSON files are capped before they are read (a sparse 17 MB config.json).
    c.write(&model);
    std::fs::File::options()
        .write(true)
        .open(model.join("config.json"))
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    assert_error(
        &DirFiles::new(&model).unwrap(),
        &["config.json", "more than the 16777216 bytes allowed"],
    );
    // --model naming a file, or nothing.
    let err = DirFiles::new(model.join("tokenizer.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("is a file; --model takes a .gguf file or the folder"),
        "{err}"
    );
    let err = DirFiles::new(tmp.0.join("nope")).err().unwrap().to_string();
    assert!(err.contains("no such model folder"), "{err}");
    n += 5;
    println!("file confinement: {n} cases");
}

/// Symbolic links within the confinement still load: a Hugging Face hub cache snapshot, whose
/// files all link to ../../blobs/.
#[test]
fn hugging_face_cache_snapshots_load() {
    let tmp = TempDir::new("hubcache");
    let repo = tmp.0.join("models--test--tiny");
    let (blobs, snapshot) = (repo.join("blobs"), repo.join("snapshots").join("abc123"));
    Checkpoint::llama32().write(&blobs);
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let name = entry.unwrap().file_name();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&name), snapshot.join(&name))
            .unwrap();
    }
    load(&DirFiles::new(&snapshot).unwrap(), &cpu(), 64).unwrap();
}

fn make_fifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn config_values_are_checked_before_anything_is_allocated() {
    let c = Checkpoint::llama32;
    let list = vec![
        (c().config("model_type", json!("mistral")), vec!["model_type = mistral"]),
        (c().config("tie_word_embeddings", json!("true")), vec!["config.json", "`tie_word_embeddings` must be true or false"]),
        (c().config("num_hidden_layers", json!(1u64 << 62)), vec!["`num_hidden_layers`", "larger than the supported 1024"]),
        (c().config("num_hidden_layers", json!(1000)), vec!["`num_hidden_layers` = 1000 but the checkpoint holds 5 layers"]),
        (c().config("num_hidden_layers", json!(3)), vec!["`num_hidden_layers` = 3 but the checkpoint holds 5 layers"]),
        (c().config("hidden_size", json!(0)), vec!["`hidden_size` must be a positive integer"]),
        (c().config("num_key_value_heads", json!(3)), vec!["`num_key_value_heads` (3) must divide"]),
        (c().config("rope_parameters", json!({"rope_type": "default", "rope_theta": 0})), vec!["`rope_theta` must be greater than 0"]),
        (c().config("rope_parameters", json!({"rope_type": "linear", "rope_theta": 1e4, "factor": 0.0})), vec!["`factor` must be greater than 0"]),
        (c().config("rms_norm_eps", json!(-1e-5)), vec!["`rms_norm_eps` must be at least 0"]),
        (c().config("rms_norm_eps", json!(1e39)), vec!["`rms_norm_eps`", "single precision"]),
        (c().config("vocab_size", json!(1e9)), vec!["`vocab_size` must be a positive integer"]),
        // Head count that does not divide the hidden size, with head_dim left to be derived.
        (
            {
                let mut x = c();
                let mut cfg = x.json("config.json");
                cfg.as_object_mut().unwrap().remove("head_dim");
                cfg["num_attention_heads"] = json!(7);
                cfg["num_key_value_heads"] = json!(7);
                x.set_json("config.json", &cfg);
                x
            },
            vec!["`num_attention_heads` (7) must divide hidden_size (96) when head_dim is not given"],
        ),
        (
            {
                let mut x = c();
                x.set_json("generation_config.json", &json!({"eos_token_id": "x"}));
                x
            },
            vec!["generation_config.json: `eos_token_id`"],
        ),
        (
            {
                let mut x = c();
                x.set_json("generation_config.json", &json!({"assistant_early_exit": 5}));
                x
            },
            vec!["generation_config.json: `assistant_early_exit` = 5 must be below the model's 5 layers"],
        ),
        (
            {
                let mut x = c();
                *x.file("config.json") = b"[1, 2]".to_vec();
                x
            },
            vec!["config.json: the top level must be a JSON object"],
        ),
        (
            {
                let mut x = c();
                *x.file("tokenizer.json") = b"{\"model\": 3}".to_vec();
                x
            },
            vec!["tokenizer.json"],
        ),
    ];
    cases("config", list);
}

#[test]
fn contexts_too_large_for_memory_fail_before_allocating() {
    // 10^9 positions: the GPU's KV cache exceeds the binding limit, the CPU's the host memory.
    let c = Checkpoint::llama32().config("max_position_embeddings", json!(1_000_000_000));
    let files = c.memory();
    let err = load(&files, &Device::Gpu(GpuOptions::default()), 1_000_000_000)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("k_cache") && err.contains("max_storage_buffer_binding_size"),
        "{err}"
    );
    let err = load(&files, &cpu(), 1_000_000_000)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("KV cache") && err.contains("--max-context"),
        "{err}"
    );
    // Tensor checks, as before.
    let mut missing = Checkpoint::llama32();
    missing.shards[0]
        .1
        .retain(|t| t.0 != "model.layers.2.mlp.up_proj.weight");
    let mut misshapen = Checkpoint::llama32();
    misshapen
        .tensor("model.layers.0.self_attn.q_proj.weight")
        .2
        .reverse();
    let mut dtype = Checkpoint::llama32();
    dtype.tensor("model.norm.weight").1 = "I16".into();
    cases(
        "tensors",
        vec![
            (
                missing,
                vec!["missing tensor", "model.layers.2.mlp.up_proj.weight"],
            ),
            (
                misshapen,
                vec![
                    "model.layers.0.self_attn.q_proj.weight",
                    "shape [96, 80]",
                    "expected [80, 96]",
                ],
            ),
            (
                dtype,
                vec!["model.norm.weight", "I16", "expected F32, F16 or BF16"],
            ),
        ],
    );
}

fn bf16_bits(x: f32) -> [u8; 2] {
    ((x.to_bits() >> 16) as u16).to_le_bytes()
}

#[test]
fn non_finite_values_are_caught() {
    // NaN and infinity in the weights, named at load.
    let mut nan = Checkpoint::llama32();
    nan.tensor("model.layers.3.mlp.down_proj.weight").3[10..12]
        .copy_from_slice(&bf16_bits(f32::NAN));
    let mut inf = Checkpoint::llama2();
    inf.tensor("model.layers.1.self_attn.q_proj.weight").3[400..404]
        .copy_from_slice(&f32::INFINITY.to_le_bytes());
    cases(
        "non-finite weights",
        vec![
            (
                nan,
                vec![
                    "`model.layers.3.mlp.down_proj.weight`",
                    "non-finite value (NaN) at element 5",
                ],
            ),
            (
                inf,
                vec![
                    "`model.layers.1.self_attn.q_proj.weight`",
                    "model-00001-of-00003.safetensors",
                    "(inf) at element 100",
                ],
            ),
        ],
    );
    // Finite weights whose activations overflow: the final norm at the largest bf16.
    let mut huge = Checkpoint::llama32();
    let norm = &mut huge.tensor("model.norm.weight").3;
    for pair in norm.chunks_mut(2) {
        pair.copy_from_slice(&bf16_bits(3.0e38));
    }
    for device in devices() {
        let mut model = load(&huge.memory(), &device, 128).unwrap();
        let err = pollster::block_on(model.generate("x", &GenerateRequest::default(), |_| true))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("non-finite logits after layer 5"),
            "{device:?}: {err}"
        );
        let err = pollster::block_on(model.logit_lens("x"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("non-finite logits after layer 1"),
            "{device:?}: {err}"
        );
    }
}

#[test]
fn device_limits_too_small() {
    let files = Checkpoint::llama32().memory();
    let device = Device::Gpu(GpuOptions {
        max_binding_override: Some(64),
        ..GpuOptions::default()
    });
    let err = load(&files, &device, 64).err().unwrap().to_string();
    assert!(
        err.contains("max_storage_buffer_binding_size") && err.contains("64"),
        "{err}"
    );
}

#[test]
fn prompts_past_the_context_length() {
    let files = Checkpoint::llama32().memory();
    for device in devices() {
        let mut model = load(&files, &device, 16).unwrap();
        for max_new_tokens in [4, usize::MAX] {
            let request = GenerateRequest {
                max_new_tokens,
                ..GenerateRequest::default()
            };
            let err = pollster::block_on(model.generate(&"word ".repeat(20), &request, |_| true))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("context holds 16"), "{err}");
        }
    }
}

/// A lost device (here destroyed, as a driver reset or the browser would) ends generation with a
/// clear error, every later call says the same, and loading again works.
#[test]
fn a_lost_gpu_device_is_an_error_and_loading_again_works() {
    let files = Checkpoint::llama32().memory();
    let device = Device::Gpu(GpuOptions::default());
    let mut model = load(&files, &device, 128).unwrap();
    pollster::block_on(model.generate("x", &GenerateRequest::default(), |_| true)).unwrap();
    match &model.engine {
        layerskip::AnyEngine::Gpu(m) => m.context().lose_device(),
        _ => unreachable!("loaded on the GPU"),
    }
    for _ in 0..2 {
        let err = pollster::block_on(model.generate("x", &GenerateRequest::default(), |_| true))
            .err()
            .unwrap();
        assert!(matches!(err, Error::DeviceLost(_)), "{err}");
        assert!(err.to_string().contains("load the model again"), "{err}");
    }
    let mut again = load(&files, &device, 128).unwrap();
    pollster::block_on(again.generate("x", &GenerateRequest::default(), |_| true)).unwrap();
}

/// The binary's arguments: every numeric option finite and in range, lists bounded by the model,
/// bench and sweep refusing to run nothing. Each a non-zero exit with a one-line message.
#[test]
fn command_line_arguments_are_checked() {
    let tmp = TempDir::new("args");
    let empty = tmp.0.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap();
    let model = fixture("llama32_tiny");
    let model = model.to_str().unwrap();
    let g = |extra: &[&'static str]| -> Vec<String> {
        ["generate", "--prompt", "x"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            g(&["--temperature", "inf"]),
            "temperature must be a finite number >= 0",
        ),
        (
            g(&["--temperature", "NaN"]),
            "temperature must be a finite number >= 0",
        ),
        (
            g(&["--temperature", "-1"]),
            "temperature must be a finite number >= 0",
        ),
        (g(&["--top-p", "0"]), "top_p must be in (0, 1]"),
        (g(&["--top-p", "1.5"]), "top_p must be in (0, 1]"),
        (
            g(&["--draft-confidence", "2"]),
            "draft_confidence must be in [0, 1]",
        ),
        (
            g(&["--num-speculations", "0"]),
            "num_speculations must be at least 1",
        ),
        (
            g(&["--repetition-penalty", "0"]),
            "repetition_penalty must be a finite number > 0",
        ),
        (
            g(&["--frequency-penalty", "2.5"]),
            "frequency_penalty must be in [-2, 2]",
        ),
        (
            g(&["--presence-penalty", "NaN"]),
            "presence_penalty must be in [-2, 2]",
        ),
        (g(&["--exit-layer", "0"]), "exit_layer counts from 1"),
        (
            g(&["--strategy", "early-exit", "--exit-layer", "99"]),
            "exit layer 99 is outside 1..=8",
        ),
        (
            g(&["--max-new-tokens", "18446744073709551615"]),
            "context holds",
        ),
        (
            g(&["--max-context", "16", "--max-new-tokens", "64"]),
            "context holds 16",
        ),
        (
            g(&["--model", "/nonexistent/model"]),
            "/nonexistent/model: no such model folder",
        ),
        (g(&["--model", "Cargo.toml"]), "Cargo.toml: is a file"),
        (g(&["--threads", "0"]), "--threads must be at least 1"),
        (
            g(&["--backend", "vulkan"]),
            "it does not apply to --device cpu",
        ),
        (
            vec![
                "sweep".into(),
                "--prompt".into(),
                "x".into(),
                "--exit-layers".into(),
                "1..1000000000".into(),
            ],
            "--exit-layers: expected A..B",
        ),
        (
            vec![
                "sweep".into(),
                "--prompt".into(),
                "x".into(),
                "--num-speculations".into(),
                "1..18446744073709551615".into(),
            ],
            "--num-speculations: expected A..B",
        ),
        (
            vec![
                "bench".into(),
                "--prompt".into(),
                "x".into(),
                "--repetitions".into(),
                "0".into(),
            ],
            "--repetitions must be at least 1",
        ),
        (
            vec!["bench".into(), "--prompts".into(), empty.into()],
            "no prompts to run",
        ),
        (
            vec![
                "bench".into(),
                "--model".into(),
                model.into(),
                "--prompt".into(),
                "x".into(),
                "--exit-layer".into(),
                "5".into(),
            ],
            "exit layer 5 is outside 1..=4",
        ),
    ];
    let n = cases.len();
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_layerskip"))
            .args(&args)
            .args(["--device", "cpu"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("backend: "))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: one error line: {stderr}");
    }
    println!("arguments: {n} cases");
}
