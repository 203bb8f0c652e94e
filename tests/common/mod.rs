//! Helpers shared by the integration tests.
#![allow(dead_code)]

use layerskip::gpu::{GpuContext, GpuOptions};
use layerskip::{Device, DirFiles, LoadOptions, Model};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

pub mod reference;

pub fn gpu() -> GpuContext {
    gpu_with(GpuOptions::default())
}

pub fn gpu_with(options: GpuOptions) -> GpuContext {
    pollster::block_on(GpuContext::new(&options)).expect("a wgpu adapter (lavapipe in CI)")
}

/// Deterministic pseudo-random numbers (xorshift), so tests need no extra crates.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Values k/64 with |k| < 128: exact in f32, f16 and bf16, so every format sees the same matrix.
    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next() % 255) as i32 - 127) as f32 / 64.0)
            .collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fixture's Hugging Face reference outputs.
pub fn reference(name: &str) -> reference::Reference {
    reference::parse(
        &std::fs::read_to_string(fixture(name).join("reference.json"))
            .expect("fixture reference.json"),
    )
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh, empty temporary folder for `test` (named after it and this process).
pub fn fresh_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("layerskip-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of fixture `name`'s files in a fresh temporary folder for `test`.
pub fn fixture_copy(name: &str, test: &str) -> PathBuf {
    let dir = fresh_dir(test);
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// f32 to IEEE half for values that are exactly representable (normal numbers and zero).
pub fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "{x} is not a normal half");
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

/// Load options for `device` with a KV cache of `context` positions.
pub fn options(device: Device, context: usize) -> LoadOptions {
    let mut options = LoadOptions::on(device);
    options.engine.max_context = context;
    options
}

/// The fast CPU backend on every core.
pub fn cpu() -> Device {
    Device::Cpu { threads: None }
}

/// A fixture model on `device` with a KV cache of 128 positions.
pub fn load(name: &str, device: Device) -> Model {
    pollster::block_on(Model::load(
        &DirFiles::new(fixture(name)).unwrap(),
        &options(device, 128),
        |_| {},
    ))
    .unwrap()
}

/// The exit head's logits at the last position of `ids` after every layer (the logit lens).
pub fn lens(model: &mut Model, ids: &[u32]) -> Vec<Vec<f32>> {
    use layerskip::{Call, Engine, Head, Input};
    let layers = model.engine.config().num_hidden_layers;
    let call = Call::new(Input::Tokens(ids), 0, 0..layers).head(Head::Lens);
    pollster::block_on(model.engine.run(&[call]))
        .unwrap()
        .remove(0)
        .logits
}

/// How often each token occurs among `samples`, as fractions.
pub fn empirical(samples: impl ExactSizeIterator<Item = u32>) -> HashMap<u32, f64> {
    let share = 1.0 / samples.len() as f64;
    let mut counts: HashMap<u32, f64> = HashMap::new();
    for s in samples {
        *counts.entry(s).or_default() += share;
    }
    counts
}

/// Total variation distance between two distributions over tokens.
pub fn tv(a: &HashMap<u32, f64>, b: &HashMap<u32, f64>) -> f64 {
    let keys: HashSet<u32> = a.keys().chain(b.keys()).copied().collect();
    keys.iter()
        .map(|k| (a.get(k).unwrap_or(&0.0) - b.get(k).unwrap_or(&0.0)).abs())
        .sum::<f64>()
        / 2.0
}

/// Runs the `layerskip` binary with `args` and no input: whether it succeeded, stdout, stderr.
pub fn layerskip(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layerskip"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
