//! The whole pipeline for callers: a model directory in, unit vectors out. Texts are tokenised, length-checked, sorted
//! by length and packed into batches under a token budget (padding waste stays small), encoded, pooled, normalised and
//! returned in input order.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};

use crate::chunking::{check_chunking, plan_chunks};
use crate::config::Qwen3Config;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::pooling::{check_dim, l2_normalize, truncate_dim, weighted_mean, Weighting};
use crate::precision::Precision;
use crate::tokenizer::{format_input, LengthPolicy, QwenTokenizer};
use crate::weights::Weights;

pub const DEFAULT_MAX_LENGTH: usize = 8192;
/// Padded tokens per forward pass: large enough for efficient matrix multiplications, small enough that activations
/// of a 0.6B model stay around a hundred MB.
pub const DEFAULT_BATCH_TOKENS: usize = 8192;

/// How inputs are limited and batched.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_length: usize,
    pub policy: LengthPolicy,
    pub batch_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_length: DEFAULT_MAX_LENGTH, policy: LengthPolicy::Error, batch_tokens: DEFAULT_BATCH_TOKENS }
    }
}

/// What one call did, for the caller's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    pub texts: usize,
    pub tokens: usize,
    pub forward_passes: usize,
}

/// One chunk of a document: where it is, the tokens the model saw, and its vector.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Byte range in the document.
    pub range: std::ops::Range<usize>,
    /// Token ids embedded (the chunk's text tokenised on its own, closing token included).
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

pub struct Embedder {
    config: Qwen3Config,
    tokenizer: QwenTokenizer,
    encoder: Encoder,
    model_dir: PathBuf,
    load_time: Duration,
    weights_bytes: u64,
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and the safetensors weights from a Hugging Face model directory, to
    /// compute in `dtype` as [`Precision::new`] defines it on `device`.
    pub fn load(model_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(model_dir, device, Precision::new(dtype, device))
    }

    /// [`load`](Self::load) with an explicit precision (tests and benchmarks compare kernels).
    pub fn load_with(model_dir: &Path, device: &Device, precision: Precision) -> Result<Self> {
        let started = Instant::now();
        let Backbone { config, weights: _, encoder, weights_bytes } = Backbone::load(model_dir, device, precision)?;
        let tokenizer = QwenTokenizer::from_file(&model_dir.join("tokenizer.json"))?;
        Ok(Embedder {
            config,
            tokenizer,
            encoder,
            model_dir: model_dir.to_path_buf(),
            load_time: started.elapsed(),
            weights_bytes,
        })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Memory the loaded weights take (on the device they were loaded to).
    pub fn weights_bytes(&self) -> u64 {
        self.weights_bytes
    }

    pub fn dtype(&self) -> DType {
        self.encoder.dtype()
    }

    /// How the model computes (kernel, weights and activations dtypes).
    pub fn precision(&self) -> Precision {
        self.encoder.precision()
    }

    pub fn device(&self) -> &Device {
        self.encoder.device()
    }

    pub fn tokenizer(&self) -> &QwenTokenizer {
        &self.tokenizer
    }

    /// The longest input accepted: the requested limit, never above the model's position range.
    pub fn max_length(&self, limits: &Limits) -> usize {
        limits.max_length.clamp(1, self.config.max_position_embeddings)
    }

    /// Token ids of one text (with its instruction), after the length policy.
    pub fn tokenize(&self, text: &str, instruct: Option<&str>, limits: &Limits) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(&format_input(text, instruct))?;
        self.tokenizer.limit(ids, self.max_length(limits), limits.policy)
    }

    /// Embeds texts that share one instruction; `dim` keeps the first `dim` dimensions (Matryoshka).
    pub fn embed(
        &self,
        texts: &[&str],
        instruct: Option<&str>,
        dim: Option<i64>,
        limits: &Limits,
        canceled: &dyn Fn() -> bool,
    ) -> Result<(Vec<Vec<f32>>, Work)> {
        let dim = self.dims(dim)?;
        let mut seqs = Vec::with_capacity(texts.len());
        for text in texts {
            // Tokenising thousands of long texts takes seconds: stay cancelable.
            if canceled() {
                return Err(Error::Canceled);
            }
            seqs.push(self.tokenize(text, instruct, limits)?);
        }
        let (vectors, work) = self.embed_tokens(&seqs, limits.batch_tokens, canceled)?;
        Ok((self.keep_dims(vectors, dim), work))
    }

    /// The dimensions `dim` asks to keep (Matryoshka), checked against the model's size: an error for a bad one, so
    /// that a caller can refuse it before computing anything.
    pub fn dims(&self, dim: Option<i64>) -> Result<Option<usize>> {
        dim.map(|d| check_dim(d, self.config.hidden_size)).transpose()
    }

    /// Matryoshka for vectors from [`embed_tokens`](Self::embed_tokens): the first `dim` dimensions, renormalised.
    pub fn truncate_to(&self, vectors: Vec<Vec<f32>>, dim: Option<i64>) -> Result<Vec<Vec<f32>>> {
        let dim = self.dims(dim)?;
        Ok(self.keep_dims(vectors, dim))
    }

    /// Splits a document into chunks of at most `chunk_tokens` tokens (closing token included) sharing at most
    /// `overlap` tokens, cut at paragraph and sentence boundaries where possible, and embeds every chunk in as few
    /// forward passes as the token budget allows. A document that fits in one chunk gives exactly `embed(doc)`.
    pub fn embed_chunks(
        &self,
        doc: &str,
        chunk_tokens: usize,
        overlap: usize,
        dim: Option<i64>,
        limits: &Limits,
        canceled: &dyn Fn() -> bool,
    ) -> Result<(Vec<Chunk>, Work)> {
        self.dims(dim)?; // a bad dim fails before anything is computed
        let plan = self.chunk_document(doc, chunk_tokens, overlap, limits)?;
        let seqs: Vec<Vec<u32>> = plan.iter().map(|(_, ids)| ids.clone()).collect();
        let (vectors, work) = self.embed_tokens(&seqs, limits.batch_tokens, canceled)?;
        Ok((self.chunks(plan, vectors, dim)?, work))
    }

    /// The first half of [`embed_chunks`](Self::embed_chunks): each chunk's byte range and token ids, for a caller
    /// that computes the vectors elsewhere (the model server batches them with other sessions' work).
    pub fn chunk_document(
        &self,
        doc: &str,
        chunk_tokens: usize,
        overlap: usize,
        limits: &Limits,
    ) -> Result<Vec<(std::ops::Range<usize>, Vec<u32>)>> {
        check_chunking(chunk_tokens, overlap, self.max_length(limits))?;
        let offsets = self.tokenizer.token_offsets(doc)?;
        // A chunk's text tokenised on its own can differ from its slice of the document by a token at the edges;
        // if one comes out over budget, plan again with a smaller window.
        let mut content = chunk_tokens - 1;
        let (ranges, seqs) = loop {
            let ranges = plan_chunks(doc, &offsets, content, overlap);
            let seqs = ranges.iter().map(|r| self.tokenizer.encode(&doc[r.clone()])).collect::<Result<Vec<_>>>()?;
            let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
            if longest <= chunk_tokens || content <= crate::chunking::MIN_CHUNK_TOKENS / 2 {
                break (ranges, seqs);
            }
            content -= longest - chunk_tokens;
        };
        if let Some(too_long) = seqs.iter().find(|s| s.len() > chunk_tokens) {
            return Err(Error::TooLong { tokens: too_long.len(), limit: chunk_tokens });
        }
        Ok(ranges.into_iter().zip(seqs).collect())
    }

    /// The second half of [`embed_chunks`](Self::embed_chunks): the chunks of `plan` with their unit vectors from
    /// [`embed_tokens`](Self::embed_tokens), cut to `dim` dimensions.
    pub fn chunks(
        &self,
        plan: Vec<(std::ops::Range<usize>, Vec<u32>)>,
        vectors: Vec<Vec<f32>>,
        dim: Option<i64>,
    ) -> Result<Vec<Chunk>> {
        let vectors = self.truncate_to(vectors, dim)?;
        Ok(plan.into_iter().zip(vectors).map(|((range, ids), embedding)| Chunk { range, ids, embedding }).collect())
    }

    /// One vector for a long document: the weighted mean of its chunk vectors ([`embed_chunks`](Self::embed_chunks)),
    /// renormalised.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_document(
        &self,
        doc: &str,
        chunk_tokens: usize,
        overlap: usize,
        weighting: Weighting,
        dim: Option<i64>,
        limits: &Limits,
        canceled: &dyn Fn() -> bool,
    ) -> Result<(Vec<f32>, Work)> {
        let (chunks, work) = self.embed_chunks(doc, chunk_tokens, overlap, dim, limits, canceled)?;
        Ok((document_vector(&chunks, weighting), work))
    }

    /// Keeps the first `dim` dimensions of each unit vector, renormalised (Matryoshka); `None` or the model's full
    /// size leaves them as they are. `dim` was checked with `check_dim`.
    fn keep_dims(&self, vectors: Vec<Vec<f32>>, dim: Option<usize>) -> Vec<Vec<f32>> {
        match dim {
            Some(d) if d < self.config.hidden_size => vectors.into_iter().map(|v| truncate_dim(v, d)).collect(),
            _ => vectors,
        }
    }

    /// Unit vectors (full dimension) for token sequences, in input order.
    pub fn embed_tokens(
        &self,
        seqs: &[Vec<u32>],
        batch_tokens: usize,
        canceled: &dyn Fn() -> bool,
    ) -> Result<(Vec<Vec<f32>>, Work)> {
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        let mut work = Work { texts: seqs.len(), tokens: seqs.iter().map(Vec::len).sum(), forward_passes: 0 };
        for batch in plan_batches(seqs, batch_tokens) {
            if canceled() {
                return Err(Error::Canceled);
            }
            let inputs: Vec<Vec<u32>> = batch.iter().map(|&i| seqs[i].clone()).collect();
            let pooled = self.encoder.forward(&inputs, canceled)?.to_vec2::<f32>()?;
            work.forward_passes += 1;
            for (&i, mut v) in batch.iter().zip(pooled) {
                l2_normalize(&mut v);
                out[i] = v;
            }
        }
        Ok((out, work))
    }
}

/// What loading any Qwen3 model directory does (the embedder's and the reranker's): check the files, read the config,
/// map the weights, check that they fit in memory, load the transformer.
pub(crate) struct Backbone {
    pub config: Qwen3Config,
    pub weights: Weights,
    pub encoder: Encoder,
    pub weights_bytes: u64,
}

impl Backbone {
    pub fn load(model_dir: &Path, device: &Device, precision: Precision) -> Result<Backbone> {
        if !model_dir.is_dir() {
            let problem = if model_dir.exists() { "is not a directory" } else { "does not exist" };
            return Err(Error::ModelDir { path: model_dir.to_path_buf(), problem: problem.into() });
        }
        for file in ["config.json", "tokenizer.json"] {
            if !model_dir.join(file).is_file() {
                return Err(Error::ModelDir { path: model_dir.to_path_buf(), problem: format!("has no {file}") });
            }
        }
        let config = Qwen3Config::from_file(&model_dir.join("config.json"))?;
        let weights = Weights::open(model_dir)?;
        let weights_bytes = weights.loaded_bytes(&precision);
        crate::memory::check(weights_bytes, crate::memory::available_on(device))?;
        let encoder = Encoder::load(&config, &weights, precision, device)?;
        Ok(Backbone { config, weights, encoder, weights_bytes })
    }
}

/// A document's one vector from its chunks: their weighted mean, renormalised.
pub fn document_vector(chunks: &[Chunk], weighting: Weighting) -> Vec<f32> {
    let weights = weighting.weights(&chunks.iter().map(|c| c.ids.len()).collect::<Vec<_>>());
    let vectors: Vec<&[f32]> = chunks.iter().map(|c| c.embedding.as_slice()).collect();
    weighted_mean(&vectors, &weights)
}

/// Groups sequence indices into batches, longest first, so that each batch's padded size (count × longest) stays within
/// `batch_tokens`; a sequence longer than the budget gets a batch of its own.
pub fn plan_batches(seqs: &[Vec<u32>], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match batches.last_mut() {
            // Sorted longest first, so the batch's first sequence is its longest.
            Some(b) if (b.len() + 1) * seqs[b[0]].len() <= batch_tokens => b.push(i),
            _ => batches.push(vec![i]),
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_token_budget_and_cover_every_input_once() {
        let lens = [5, 100, 3, 40, 40, 7, 250, 1];
        let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| vec![1; n]).collect();
        let batches = plan_batches(&seqs, 120);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lens[i]).max().unwrap();
            assert!(b.len() == 1 || b.len() * longest <= 120, "{b:?}");
        }
        assert_eq!(batches[0], vec![6]); // over budget: alone
        assert_eq!(batches.len(), 4, "{batches:?}");
    }
}
