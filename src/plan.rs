//! The memory plan: what a model will occupy (weights in their formats, KV cache, activations,
//! exit-query cache, readback and rope table), computed with checked arithmetic before any
//! weight is read, and refused with one message that names the total, the limit that is exceeded
//! and what would fit.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::format::{Format, KvFormat, Layout};
use crate::llama::MatrixSpec;
use serde::Serialize;

/// Bytes of memory this process can still take, where the platform says (Linux: MemAvailable).
pub fn available_host_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Bytes in decimal units, as download sizes are usually quoted.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

fn product(factors: &[u64]) -> Result<u64> {
    factors
        .iter()
        .try_fold(1u64, |a, &b| a.checked_mul(b))
        .ok_or_else(|| Error::Invalid("a buffer size overflows".into()))
}

/// What a loaded model occupies, by part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryPlan {
    /// Weights in their runtime formats (rows padded to whole groups), norms included.
    pub weights: u64,
    /// The weight formats in use ("q4", or "bf16", or "f16+f32" when they differ).
    pub weight_format: String,
    pub kv_cache: u64,
    pub kv_format: KvFormat,
    pub context: usize,
    /// Activation buffers for one block of rows.
    pub activations: u64,
    pub exit_cache: u64,
    /// Logits kept for reading back (the logit lens, host-side sampling).
    pub readback: u64,
    pub rope_table: u64,
    /// The loader's host staging budget.
    pub staging: u64,
    pub total: u64,
    /// The largest single buffer and its size (GPU only: bounded by the binding limit).
    pub largest_buffer: String,
    pub largest_buffer_bytes: u64,
}

/// Shapes that size the activation buffers.
#[derive(Debug, Clone, Copy)]
pub struct Blocks {
    /// Rows one forward block holds (a prompt chunk).
    pub rows: usize,
    /// Rows the exit head and the exit-query cache take at once (a verification block).
    pub head_rows: usize,
    /// Picks (and chained tokens) one run may produce.
    pub picks: usize,
}

impl Blocks {
    /// Blocks of up to `rows` rows (and `head_rows` for the exit head), fewer where the
    /// adapter's binding limit cannot hold an activation buffer that wide; at least one row.
    pub fn fitting(
        config: &Config,
        max_binding: u64,
        rows: usize,
        head_rows: usize,
        picks: usize,
    ) -> Self {
        let widest = [
            2 * config.intermediate_size,
            config.q_dim() + 2 * config.kv_dim(),
            config.hidden_size,
        ]
        .into_iter()
        .max()
        .unwrap_or(1) as u64
            * 4;
        let rows = (max_binding / widest.max(1)).clamp(1, rows as u64) as usize;
        // The logit lens reads back a row per layer plus a block of head rows.
        let logit_rows = max_binding / (config.vocab_size as u64 * 4);
        let head_rows = head_rows
            .min(rows)
            .min(logit_rows.saturating_sub(config.num_hidden_layers as u64) as usize)
            .max(1);
        Self {
            rows,
            head_rows,
            picks,
        }
    }
}

impl MemoryPlan {
    /// The plan for `specs` in their `layouts` with a KV cache of `context` positions. With
    /// `stored_as`, weights are held in that format whatever they were loaded from (the CPU
    /// reference dequantizes everything to f32).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        specs: &[MatrixSpec],
        layouts: &[Layout],
        stored_as: Option<Format>,
        context: usize,
        kv_format: KvFormat,
        blocks: Blocks,
        staging: usize,
    ) -> Result<Self> {
        let (h, i, v, l) = (
            config.hidden_size as u64,
            config.intermediate_size as u64,
            config.vocab_size as u64,
            config.num_hidden_layers as u64,
        );
        let qkv = (config.q_dim() + 2 * config.kv_dim()) as u64;
        let rows = blocks.rows as u64;
        let head_rows = blocks.head_rows as u64;
        let mut weights = product(&[2 * l + 1, h, 4])?;
        let mut largest = (String::new(), 0u64);
        for (spec, layout) in specs.iter().zip(layouts) {
            let bytes = match stored_as {
                Some(f) => f.bytes(spec.rows, spec.cols),
                None => layout.bytes(),
            }
            .ok_or_else(|| Error::Invalid(format!("the size of {} overflows", spec.name)))?;
            weights = weights.saturating_add(bytes);
        }
        let mut names: Vec<&str> = layouts
            .iter()
            .flat_map(|l| l.formats())
            .map(|f| f.name())
            .collect();
        names.sort();
        names.dedup();
        let kv_layer = product(&[
            context as u64,
            config.kv_dim() as u64,
            kv_format.bytes_per_value() as u64,
        ])?;
        let parts = [
            ("k_cache[0]", kv_layer),
            ("logits", product(&[head_rows, v, 4])?),
            ("out_logits", product(&[l + head_rows, v, 4])?),
            (
                "rope",
                product(&[context as u64, config.head_dim as u64 / 2, 8])?,
            ),
            ("gate_up", product(&[rows, 2 * i, 4])?),
            ("qkv", product(&[rows, qkv, 4])?),
        ];
        for (name, bytes) in parts {
            if bytes > largest.1 {
                largest = (name.to_string(), bytes);
            }
        }
        let activations = product(&[rows, 2 * h + qkv + config.q_dim() as u64 + 2 * i, 4])?
            .saturating_add(product(&[head_rows, v, 4])?)
            .saturating_add(product(&[context as u64 + blocks.picks as u64, 4])?)
            .saturating_add(product(&[blocks.picks as u64, 8])?);
        let loaded = names.join("+");
        let mut plan = MemoryPlan {
            weights,
            weight_format: match stored_as {
                Some(f) if f.name() != loaded => format!("{f} from {loaded}"),
                _ => loaded,
            },
            kv_cache: product(&[2 * l, kv_layer])?,
            kv_format,
            context,
            activations,
            exit_cache: product(&[head_rows, h, 4])?,
            readback: parts[2].1,
            rope_table: parts[3].1,
            staging: staging as u64,
            total: 0,
            largest_buffer: largest.0,
            largest_buffer_bytes: largest.1,
        };
        plan.total = [
            plan.weights,
            plan.kv_cache,
            plan.activations,
            plan.exit_cache,
            plan.readback,
            plan.rope_table,
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b));
        Ok(plan)
    }

    /// "weights 693.1 MB (q4) + KV cache 67.1 MB (f16, 2048 positions) + ... = 801.0 MB"
    pub fn describe(&self) -> String {
        format!(
            "weights {} ({}) + KV cache {} ({}, {} positions) + activations {} + exit-query cache {} + readback {} + rope table {} = {}",
            human(self.weights),
            self.weight_format,
            human(self.kv_cache),
            self.kv_format,
            self.context,
            human(self.activations),
            human(self.exit_cache),
            human(self.readback),
            human(self.rope_table),
            human(self.total)
        )
    }

    /// Checks every buffer against the adapter's binding limit; the error names the total, the
    /// limit, and the context (or KV format) that would fit.
    pub fn check_gpu(&self, config: &Config, max_binding: u64) -> Result<()> {
        if self.largest_buffer_bytes <= max_binding {
            return Ok(());
        }
        let per_position = (config.kv_dim() * self.kv_format.bytes_per_value()) as u64;
        let fits = (max_binding / per_position.max(1))
            .min((max_binding / (config.head_dim as u64 * 4)).max(1));
        let hint = match self.largest_buffer.as_str() {
            "k_cache[0]" | "rope" => {
                let f16 = match self.kv_format {
                    KvFormat::F32 => " (or --kv-cache f16 for twice as many)",
                    KvFormat::F16 => "",
                };
                format!("at most {fits} positions fit: try --max-context {fits}{f16}")
            }
            _ => "the vocabulary or layer sizes exceed what this adapter can bind".to_string(),
        };
        Err(Error::DoesNotFit(format!(
            "the model does not fit this adapter: {}; buffer `{}` needs {} but the adapter binds at most {} (max_storage_buffer_binding_size); {hint}",
            self.describe(),
            self.largest_buffer,
            human(self.largest_buffer_bytes),
            human(max_binding),
        )))
    }

    /// Checks the total against the host memory available (where that is known).
    pub fn check_host(&self, hint: &str) -> Result<()> {
        match available_host_memory() {
            Some(available) if self.total > available => Err(Error::DoesNotFit(format!(
                "the model needs {} of memory but only {} are available: {}; {hint}",
                human(self.total),
                human(available),
                self.describe()
            ))),
            _ => Ok(()),
        }
    }
}
