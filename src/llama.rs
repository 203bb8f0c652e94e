//! The Llama model's weights, defined once for every backend: which checkpoint tensors there are,
//! how they are fused into the matrices the forward pass uses (q|k|v and gate|up, stacked by rows),
//! and a loader that streams them into any backend's storage in row ranges, so the host holds at
//! most a fixed staging budget of weight bytes at a time, whatever the model's size.

use crate::checkpoint::{Checkpoint, Progress, Source};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files::Files;
use crate::format::{Format, Layout, Packed, Quantization};

/// Host bytes the loader may hold at once by default (read buffers plus packed rows).
pub const DEFAULT_STAGING_BYTES: usize = 64 << 20;

pub struct LayerWeights<M, V> {
    pub input_norm: V,
    /// q, k and v projections stacked by rows: one matrix, one pass over the input.
    pub qkv: M,
    pub o: M,
    pub post_norm: V,
    /// gate and up projections stacked by rows.
    pub gate_up: M,
    pub down: M,
}

/// Every weight of a Llama model, in a backend's matrix and vector types.
pub struct Weights<M, V> {
    pub embed: M,
    /// `None` when the exit head is tied to the embedding.
    pub lm_head: Option<M>,
    pub final_norm: V,
    pub layers: Vec<LayerWeights<M, V>>,
    /// The exit head's rows of the draft vocabulary, gathered at load (see `vocab.rs`).
    pub draft_head: Option<DraftHead<M>>,
}

/// A reduced exit head for drafting: the head's rows for `ids` (increasing), contiguous, so a
/// draft reads only these rows.
pub struct DraftHead<M> {
    pub ids: Vec<u32>,
    pub matrix: M,
}

impl<M, V> Weights<M, V> {
    /// The exit head's matrix (lm_head, or the embedding when tied).
    pub fn head(&self) -> &M {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every matrix, embedding first.
    pub fn matrices(&self) -> impl Iterator<Item = &M> {
        [&self.embed]
            .into_iter()
            .chain(self.lm_head.as_ref())
            .chain(self.draft_head.as_ref().map(|d| &d.matrix))
            .chain(
                self.layers
                    .iter()
                    .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down]),
            )
    }

    fn matrix_mut(&mut self, id: MatrixId) -> Option<&mut M> {
        match id {
            MatrixId::Embed => Some(&mut self.embed),
            MatrixId::LmHead => self.lm_head.as_mut(),
            MatrixId::Qkv(l) => self.layers.get_mut(l).map(|w| &mut w.qkv),
            MatrixId::O(l) => self.layers.get_mut(l).map(|w| &mut w.o),
            MatrixId::GateUp(l) => self.layers.get_mut(l).map(|w| &mut w.gate_up),
            MatrixId::Down(l) => self.layers.get_mut(l).map(|w| &mut w.down),
            MatrixId::DraftHead => self.draft_head.as_mut().map(|d| &mut d.matrix),
        }
    }
}

/// Where a backend keeps weights: host vectors, or GPU buffers.
pub trait Store {
    type Matrix;
    type Vector;
    /// Allocates a matrix of this layout, before any weight is read.
    fn matrix(&mut self, name: &str, layout: &Layout) -> Result<Self::Matrix>;
    /// Writes packed rows into `matrix` from row `row0`; they lie in one run of its layout and
    /// are in that run's format.
    fn write(&mut self, matrix: &mut Self::Matrix, row0: usize, rows: &Packed) -> Result<()>;
    fn vector(&mut self, name: &str, values: &[f32]) -> Result<Self::Vector>;
}

/// The fused matrices of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixId {
    Embed,
    LmHead,
    Qkv(usize),
    O(usize),
    GateUp(usize),
    Down(usize),
    /// The draft vocabulary's head rows, gathered from the exit head's while it streams.
    DraftHead,
}

/// A checkpoint tensor's place in a fused matrix.
#[derive(Debug, Clone)]
pub struct Piece {
    pub tensor: String,
    pub matrix: MatrixId,
    pub row0: usize,
    pub rows: usize,
    pub cols: usize,
}

/// A fused matrix: its name (for messages and GPU labels), shape and the tensors it is made of.
#[derive(Debug, Clone)]
pub struct MatrixSpec {
    pub id: MatrixId,
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub pieces: Vec<Piece>,
}

/// Every matrix of a Llama model of this config. Without `lm_head.weight` in a tied checkpoint
/// the exit head reuses the embedding, as transformers does.
pub fn matrix_specs(config: &Config) -> Vec<MatrixSpec> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let spec = |id, name: String, cols: usize, parts: &[(String, usize)]| {
        let mut row0 = 0;
        let pieces = parts
            .iter()
            .map(|(tensor, rows)| {
                let p = Piece {
                    tensor: tensor.clone(),
                    matrix: id,
                    row0,
                    rows: *rows,
                    cols,
                };
                row0 += rows;
                p
            })
            .collect();
        MatrixSpec {
            id,
            name,
            rows: row0,
            cols,
            pieces,
        }
    };
    let mut specs = vec![spec(
        MatrixId::Embed,
        "embed_tokens".into(),
        h,
        &[("model.embed_tokens.weight".into(), v)],
    )];
    if !config.tie_word_embeddings {
        specs.push(spec(
            MatrixId::LmHead,
            "lm_head".into(),
            h,
            &[("lm_head.weight".into(), v)],
        ));
    }
    for l in 0..config.num_hidden_layers {
        let p = |t: &str| format!("model.layers.{l}.{t}.weight");
        specs.extend([
            spec(
                MatrixId::Qkv(l),
                format!("layers.{l}.qkv"),
                h,
                &[
                    (p("self_attn.q_proj"), q),
                    (p("self_attn.k_proj"), kv),
                    (p("self_attn.v_proj"), kv),
                ],
            ),
            spec(
                MatrixId::O(l),
                format!("layers.{l}.o_proj"),
                q,
                &[(p("self_attn.o_proj"), h)],
            ),
            spec(
                MatrixId::GateUp(l),
                format!("layers.{l}.gate_up"),
                h,
                &[(p("mlp.gate_proj"), i), (p("mlp.up_proj"), i)],
            ),
            spec(
                MatrixId::Down(l),
                format!("layers.{l}.down_proj"),
                i,
                &[(p("mlp.down_proj"), h)],
            ),
        ]);
    }
    specs
}

/// The norm weight vectors: (tensor name, length).
fn vector_names(config: &Config) -> Vec<String> {
    let mut names = vec![];
    for l in 0..config.num_hidden_layers {
        names.push(format!("model.layers.{l}.input_layernorm.weight"));
        names.push(format!("model.layers.{l}.post_attention_layernorm.weight"));
    }
    names.push("model.norm.weight".into());
    names
}

/// What loading measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadReport {
    /// The most host bytes the loader held at once (read buffers, conversions, packed rows).
    pub peak_staging_bytes: u64,
    /// Bytes of the weights in their runtime formats.
    pub weight_bytes: u64,
}

/// The matrices to load and their layouts: [`matrix_specs`] and [`matrix_layouts`], plus a draft
/// head of `draft_rows` rows in the exit head's format when there is a draft vocabulary.
pub fn planned_matrices(
    checkpoint: &Checkpoint,
    quantize: Option<Quantization>,
    draft_rows: Option<usize>,
) -> Result<(Vec<MatrixSpec>, Vec<Layout>)> {
    let config = &checkpoint.config;
    let mut specs = matrix_specs(config);
    let mut layouts = matrix_layouts(checkpoint, &specs, quantize)?;
    if let Some(rows) = draft_rows {
        let head = head_id(config);
        let at = specs.iter().position(|s| s.id == head).unwrap_or(0);
        // The head is one tensor, so one run.
        let format = layouts[at].runs[0].format;
        layouts.push(Layout::uniform(format, rows, config.hidden_size));
        specs.push(MatrixSpec {
            id: MatrixId::DraftHead,
            name: "draft_head".into(),
            rows,
            cols: config.hidden_size,
            pieces: vec![],
        });
    }
    Ok((specs, layouts))
}

/// The matrix the exit head reads: lm_head, or the embedding when tied.
fn head_id(config: &Config) -> MatrixId {
    match config.tie_word_embeddings {
        true => MatrixId::Embed,
        false => MatrixId::LmHead,
    }
}

/// The layout each matrix will have: every row in `quantize`, or each tensor in its own format
/// (a float type, a quantized checkpoint's format, a GGUF type).
pub fn matrix_layouts(
    checkpoint: &Checkpoint,
    specs: &[MatrixSpec],
    quantize: Option<Quantization>,
) -> Result<Vec<Layout>> {
    if let (Some(have), Some(_)) = (checkpoint.quantized(), quantize) {
        return Err(Error::Invalid(format!(
            "the checkpoint is already quantized ({have}); --quantize applies to f32, f16 and bf16 checkpoints"
        )));
    }
    specs
        .iter()
        .map(|m| {
            if let Some(q) = quantize {
                return Ok(Layout::uniform(q.into(), m.rows, m.cols));
            }
            let parts = m
                .pieces
                .iter()
                .map(|p| {
                    Ok((
                        p.rows,
                        checkpoint.source(&p.tensor, p.rows, p.cols)?.format(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Layout::from_parts(m.cols, parts))
        })
        .collect()
}

/// Loads every weight into `store`: checks every tensor first (so a bad checkpoint fails before
/// anything is allocated), allocates all matrices, then streams each tensor in row ranges of at
/// most `staging` bytes, file by file in offset order, checking for NaN and infinity on the way.
/// With `draft_ids`, the exit head's rows for those ids are also written to a draft head as they
/// stream past.
pub async fn load<S: Store>(
    checkpoint: &Checkpoint,
    files: &impl Files,
    quantize: Option<Quantization>,
    staging: usize,
    store: &mut S,
    draft_ids: Option<&[u32]>,
    mut progress: impl FnMut(Progress),
) -> Result<(Weights<S::Matrix, S::Vector>, LoadReport)> {
    let config = &checkpoint.config;
    let (specs, layouts) = planned_matrices(checkpoint, quantize, draft_ids.map(<[u32]>::len))?;
    if let Some(ids) = draft_ids {
        if ids.windows(2).any(|w| w[0] >= w[1])
            || ids
                .last()
                .is_some_and(|&id| id as usize >= config.vocab_size)
        {
            return Err(Error::Invalid(
                "draft vocabulary ids must be increasing and inside the vocabulary".into(),
            ));
        }
    }
    let mut report = LoadReport::default();
    let mut total = 0u64;
    for spec in &specs {
        for p in &spec.pieces {
            total += checkpoint.source(&p.tensor, p.rows, p.cols)?.file_bytes();
        }
    }
    let mut vectors = vec![];
    for name in vector_names(config) {
        let (entry, dtype) = checkpoint.vector(&name, config.hidden_size)?;
        total += entry.len;
        vectors.push((name, entry, dtype));
    }
    let mut done = 0u64;
    progress(Progress { done, total });

    // Norm vectors are small: read whole.
    let mut norms = vec![];
    for (name, entry, dtype) in vectors {
        let bytes = files
            .read_range(&entry.file, entry.start, entry.len as usize)
            .await?;
        if let Some((index, value)) = dtype.find_non_finite(&bytes) {
            return Err(Error::NonFiniteWeight {
                name,
                file: entry.file.clone(),
                value,
                index,
            });
        }
        norms.push(store.vector(&name, &dtype.to_f32(&bytes))?);
        done += entry.len;
        report.peak_staging_bytes = report.peak_staging_bytes.max(entry.len);
    }
    let mut matrices = vec![];
    for (spec, layout) in specs.iter().zip(&layouts) {
        report.weight_bytes += layout.bytes().unwrap_or(u64::MAX);
        matrices.push(Some(store.matrix(&spec.name, layout)?));
    }
    let mut take = |id: MatrixId| -> Result<S::Matrix> {
        let at = specs.iter().position(|s| s.id == id);
        at.and_then(|i| matrices[i].take())
            .ok_or_else(|| Error::Invalid(format!("matrix {id:?} missing")))
    };
    let mut norms = norms.into_iter();
    let mut norm = || {
        norms
            .next()
            .ok_or_else(|| Error::Invalid("norm vector missing".into()))
    };
    let mut layers = vec![];
    for l in 0..config.num_hidden_layers {
        layers.push(LayerWeights {
            input_norm: norm()?,
            post_norm: norm()?,
            qkv: take(MatrixId::Qkv(l))?,
            o: take(MatrixId::O(l))?,
            gate_up: take(MatrixId::GateUp(l))?,
            down: take(MatrixId::Down(l))?,
        });
    }
    let mut weights = Weights {
        embed: take(MatrixId::Embed)?,
        lm_head: match config.tie_word_embeddings {
            true => None,
            false => Some(take(MatrixId::LmHead)?),
        },
        final_norm: norm()?,
        layers,
        draft_head: match draft_ids {
            Some(ids) => Some(DraftHead {
                ids: ids.to_vec(),
                matrix: take(MatrixId::DraftHead)?,
            }),
            None => None,
        },
    };
    let head = head_id(config);

    // Stream the matrices' tensors in file order, so a disk or a download reads sequentially.
    let mut pieces: Vec<(&Piece, Format, Source)> = vec![];
    for (spec, layout) in specs.iter().zip(&layouts) {
        for p in &spec.pieces {
            let format = layout
                .run_at(p.row0)
                .ok_or_else(|| Error::Invalid(format!("no rows for {}", p.tensor)))?
                .format;
            pieces.push((p, format, checkpoint.source(&p.tensor, p.rows, p.cols)?));
        }
    }
    pieces.sort_by_key(|(_, _, s)| {
        let e = s.data_entry();
        (checkpoint.files.iter().position(|f| f == &e.file), e.start)
    });
    for (piece, format, source) in pieces {
        // Host bytes per row: what is read, an f32 copy when converting, and the packed row.
        let converts = source.format() != format;
        let per_row = source.file_row_bytes()
            + if converts { 4 * piece.cols } else { 0 }
            + format.row_data_bytes(piece.cols)
            + format.row_scale_bytes(piece.cols);
        let chunk = (staging / per_row.max(1)).max(1);
        for r0 in (0..piece.rows).step_by(chunk) {
            let matrix = weights
                .matrix_mut(piece.matrix)
                .ok_or_else(|| Error::Invalid(format!("no matrix for {}", piece.tensor)))?;
            let n = chunk.min(piece.rows - r0);
            let (packed, read) = source
                .read_rows(files, &piece.tensor, r0, n, format)
                .await?;
            let converted = if converts { 4 * n * piece.cols } else { 0 };
            let held = (read + converted + packed.bytes()) as u64;
            report.peak_staging_bytes = report.peak_staging_bytes.max(held);
            store.write(matrix, piece.row0 + r0, &packed)?;
            // The draft vocabulary's rows among these: a contiguous run of the draft head.
            if let (true, Some(draft)) = (piece.matrix == head, weights.draft_head.as_mut()) {
                let first = (piece.row0 + r0) as u32;
                let lo = draft.ids.partition_point(|&id| id < first);
                let hi = draft.ids.partition_point(|&id| id < first + n as u32);
                if hi > lo {
                    let rows = draft.ids[lo..hi].iter().map(|&id| (id - first) as usize);
                    let gathered = packed.gather(format, piece.cols, rows);
                    store.write(&mut draft.matrix, lo, &gathered)?;
                }
            }
            done += read as u64;
            progress(Progress { done, total });
        }
    }
    Ok((weights, report))
}
