//! Text → token ids with the model's own `tokenizer.json`, the Qwen3-Embedding input format, and the length policy.

use std::path::Path;

use crate::error::{Error, Result};

/// Every sequence ends with this token; its final hidden state is the embedding.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// What to do with an input longer than `max_length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthPolicy {
    /// Refuse it, naming the token count and the limit.
    Error,
    /// Keep the first `max_length - 1` tokens and the closing `<|endoftext|>`.
    Truncate,
}

/// The model input for a text: documents raw, queries as `Instruct: {instruct}\nQuery:{text}` (no space after `Query:`).
pub fn format_input(text: &str, instruct: Option<&str>) -> String {
    match instruct {
        Some(instruct) => format!("Instruct: {instruct}\nQuery:{text}"),
        None => text.to_string(),
    }
}

pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
    end_of_text: u32,
    /// True when the file's post-processor already appends `<|endoftext|>` (the real one does).
    appends_end_of_text: bool,
}

impl QwenTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), problem: e.to_string() })?;
        let end_of_text = inner.token_to_id(END_OF_TEXT).ok_or_else(|| Error::Tokenizer {
            path: path.to_path_buf(),
            problem: format!("it has no {END_OF_TEXT} token"),
        })?;
        let probe = inner
            .encode("a", true)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), problem: e.to_string() })?;
        let appends_end_of_text = probe.get_ids().last() == Some(&end_of_text);
        Ok(QwenTokenizer { inner, end_of_text, appends_end_of_text })
    }

    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    /// Token ids of one model input, always ending in `<|endoftext|>`; no length limit applied.
    pub fn encode(&self, input: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(input, true)
            .map_err(|e| Error::Tokenizer { path: "tokenizer.json".into(), problem: e.to_string() })?;
        let mut ids = encoding.get_ids().to_vec();
        if !self.appends_end_of_text {
            ids.push(self.end_of_text);
        }
        Ok(ids)
    }

    /// Byte offsets of the tokens of a text as it appears inside a document (no special tokens added), for chunking.
    pub fn token_offsets(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer { path: "tokenizer.json".into(), problem: e.to_string() })?;
        Ok(encoding.get_offsets().to_vec())
    }

    /// Applies `policy` to a sequence from [`encode`](Self::encode).
    pub fn limit(&self, mut ids: Vec<u32>, max_length: usize, policy: LengthPolicy) -> Result<Vec<u32>> {
        if ids.len() <= max_length {
            return Ok(ids);
        }
        match policy {
            LengthPolicy::Error => Err(Error::TooLong { tokens: ids.len(), limit: max_length }),
            LengthPolicy::Truncate => {
                ids.truncate(max_length.saturating_sub(1));
                ids.push(self.end_of_text);
                Ok(ids)
            }
        }
    }

    /// The text of a run of token ids (used to show what a chunk or a truncated input contains).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer { path: "tokenizer.json".into(), problem: e.to_string() })
    }
}
