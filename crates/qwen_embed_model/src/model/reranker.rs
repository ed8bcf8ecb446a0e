//! Qwen3-Reranker: the Qwen3 backbone run as a cross-encoder over (query, document) pairs, exactly as the official
//! code formulates it (QwenLM/Qwen3-Embedding, `examples/qwen3_reranker_transformers.py`):
//!
//! - input = [`PREFIX`] + the pair body `<Instruct>: {instruct}\n<Query>: {query}\n<Document>: {doc}` tokenised by
//!   the model's own `tokenizer.json` (its post-processor decides about special tokens) + [`SUFFIX`]; over-long
//!   bodies are cut to the length limit minus prefix and suffix, which are never cut;
//! - score = softmax over the "yes" and "no" logits at the last position = sigmoid(h · (W[yes] − W[no])), with h the
//!   last hidden state after the final norm: only those two rows of the LM head are read, never the vocabulary
//!   projection.
//!
//! The backbone is the embedder's encoder (left padding, last position only in the last layer), so pairs are scored
//! in batched forward passes under the same token budget.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use tokenizers::{Tokenizer, TruncationDirection};

use crate::config::Qwen3Config;
use crate::embedder::{plan_batches, Backbone, Limits, Work};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::tokenizer::LengthPolicy;

pub const PREFIX: &str =
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and \
                          the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n\
                          <|im_start|>user\n";
pub const SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
pub const DEFAULT_INSTRUCT: &str = "Given a web search query, retrieve relevant passages that answer the query";

/// The pair body between prefix and suffix.
pub fn format_pair(query: &str, document: &str, instruct: Option<&str>) -> String {
    format!("<Instruct>: {}\n<Query>: {query}\n<Document>: {document}", instruct.unwrap_or(DEFAULT_INSTRUCT))
}

pub struct Reranker {
    config: Qwen3Config,
    tokenizer: Tokenizer,
    encoder: Encoder,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// W[yes] − W[no] of the LM head.
    direction: Vec<f32>,
    model_dir: PathBuf,
    load_time: Duration,
}

impl Reranker {
    /// Loads a causal-LM checkpoint (Qwen3ForCausalLM layout: LM head tied to `embed_tokens` or stored as
    /// `lm_head.weight`) to compute in `dtype` as [`Precision::new`] defines it on `device`.
    pub fn load(model_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with(model_dir, device, Precision::new(dtype, device))
    }

    pub fn load_with(model_dir: &Path, device: &Device, precision: Precision) -> Result<Self> {
        let started = Instant::now();
        let Backbone { config, weights, encoder, .. } = Backbone::load(model_dir, device, precision)?;
        let path = model_dir.join("tokenizer.json");
        let bad_tokenizer = |problem: String| Error::Tokenizer { path: path.clone(), problem };
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| bad_tokenizer(e.to_string()))?;
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| bad_tokenizer(format!("it has no \"{token}\" token")))
        };
        let (yes, no) = (id("yes")? as usize, id("no")? as usize);
        let head = if config.tie_word_embeddings {
            weights.rows("embed_tokens.weight", false, &[yes, no])?
        } else if weights.has_exact("lm_head.weight") {
            weights.rows("lm_head.weight", true, &[yes, no])?
        } else {
            return Err(Error::Weights {
                path: model_dir.to_path_buf(),
                problem: "no \"lm_head.weight\" tensor and \"tie_word_embeddings\" is not true in config.json: this \
                          is not a causal-LM checkpoint (a reranker needs its LM head)"
                    .into(),
            });
        };
        if head[0].len() != config.hidden_size {
            return Err(Error::Shape {
                name: "lm_head.weight".into(),
                expected: vec![config.vocab_size, config.hidden_size],
                found: vec![config.vocab_size, head[0].len()],
            });
        }
        let direction = head[0].iter().zip(&head[1]).map(|(y, n)| y - n).collect();
        let plain = |text: &str| -> Result<Vec<u32>> {
            Ok(tokenizer.encode(text, false).map_err(|e| bad_tokenizer(e.to_string()))?.get_ids().to_vec())
        };
        let (prefix, suffix) = (plain(PREFIX)?, plain(SUFFIX)?);
        Ok(Reranker {
            config,
            encoder,
            prefix,
            suffix,
            direction,
            tokenizer,
            model_dir: model_dir.to_path_buf(),
            load_time: started.elapsed(),
        })
    }

    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    pub fn precision(&self) -> Precision {
        self.encoder.precision()
    }

    /// The model input for one pair: prefix + body (cut to fit when `limits.policy` allows) + suffix.
    pub fn tokenize(&self, query: &str, document: &str, instruct: Option<&str>, limits: &Limits) -> Result<Vec<u32>> {
        let max_length = limits.max_length.clamp(1, self.config.max_position_embeddings);
        let fixed = self.prefix.len() + self.suffix.len();
        let tokenizer_error = |e: tokenizers::Error| Error::Tokenizer {
            path: self.model_dir.join("tokenizer.json"),
            problem: e.to_string(),
        };
        let body = format_pair(query, document, instruct);
        let mut encoding = self.tokenizer.encode(body.as_str(), false).map_err(tokenizer_error)?;
        let added = self.tokenizer.get_post_processor().map_or(0, |p| {
            use tokenizers::tokenizer::PostProcessor;
            p.added_tokens(false)
        });
        let total = fixed + encoding.len() + added;
        if total > max_length {
            // What transformers does with truncation='longest_first' and max_length = limit − prefix − suffix: cut
            // the body so that it and the post-processor's tokens fit.
            if limits.policy == LengthPolicy::Error {
                return Err(Error::PairTooLong { tokens: total, limit: max_length });
            }
            match max_length.checked_sub(fixed + added).filter(|&room| room > 0) {
                Some(room) => encoding.truncate(room, 0, TruncationDirection::Right),
                None => return Err(Error::NoRoomForPair { prompt: fixed + added, limit: max_length }),
            }
        }
        let body = self.tokenizer.post_process(encoding, None, true).map_err(tokenizer_error)?;
        Ok([&self.prefix[..], body.get_ids(), &self.suffix[..]].concat())
    }

    /// Scores in [0, 1] of `documents` for `query`, in input order.
    pub fn rerank(
        &self,
        query: &str,
        documents: &[&str],
        instruct: Option<&str>,
        limits: &Limits,
        canceled: &dyn Fn() -> bool,
    ) -> Result<(Vec<f64>, Work)> {
        let mut seqs = Vec::with_capacity(documents.len());
        for doc in documents {
            if canceled() {
                return Err(Error::Canceled);
            }
            seqs.push(self.tokenize(query, doc, instruct, limits)?);
        }
        self.score_tokens(&seqs, limits.batch_tokens, canceled)
    }

    /// Scores of token sequences from [`tokenize`](Self::tokenize), in input order.
    pub fn score_tokens(
        &self,
        seqs: &[Vec<u32>],
        batch_tokens: usize,
        canceled: &dyn Fn() -> bool,
    ) -> Result<(Vec<f64>, Work)> {
        let mut scores = vec![0.0; seqs.len()];
        let mut work = Work { texts: seqs.len(), tokens: seqs.iter().map(Vec::len).sum(), forward_passes: 0 };
        for batch in plan_batches(seqs, batch_tokens) {
            if canceled() {
                return Err(Error::Canceled);
            }
            let inputs: Vec<Vec<u32>> = batch.iter().map(|&i| seqs[i].clone()).collect();
            let hidden = self.encoder.forward(&inputs, canceled)?.to_vec2::<f32>()?;
            work.forward_passes += 1;
            for (&i, h) in batch.iter().zip(hidden) {
                let logit: f64 = h.iter().zip(&self.direction).map(|(a, b)| *a as f64 * *b as f64).sum();
                scores[i] = 1.0 / (1.0 + (-logit).exp());
            }
        }
        Ok((scores, work))
    }
}
