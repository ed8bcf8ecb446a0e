//! `config.json` of a Qwen3 model. Reads both the form the real Qwen3-Embedding files use (top-level `rope_theta`,
//! `torch_dtype`) and the one transformers >= 5 writes (`rope_parameters`, `dtype`). Nothing here is hard-coded to one
//! model size.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    /// A causal LM's head is `embed_tokens` (true) or its own `lm_head.weight` (false); the reranker reads it.
    pub tie_word_embeddings: bool,
    /// The dtype the checkpoint was saved in, as named in the file (informational).
    pub saved_dtype: Option<String>,
}

#[derive(Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RawRope>,
    rope_scaling: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    attention_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

fn required(value: Option<usize>, key: &str, path: &Path) -> Result<usize> {
    match value {
        Some(0) => Err(Error::config(path, format!("\"{key}\" must be positive"))),
        Some(v) => Ok(v),
        None => Err(Error::config(path, format!("missing \"{key}\""))),
    }
}

impl Qwen3Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// `path` only names the file in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        let model_type = raw.model_type.as_deref().unwrap_or("(missing)");
        if model_type != "qwen3" {
            let arch = raw.architectures.unwrap_or_default().join(", ");
            return Err(Error::Unsupported(format!(
                "model_type \"{model_type}\" (architectures: {arch}) in \"{}\"; only \"qwen3\" is supported",
                path.display()
            )));
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(Error::Unsupported(format!("hidden_act \"{act}\"; Qwen3 uses \"silu\"")));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(Error::Unsupported("sliding-window attention".into()));
        }
        for rope in [&raw.rope_parameters, &raw.rope_scaling].into_iter().flatten() {
            if let Some(kind) = rope.rope_type.as_deref().filter(|t| *t != "default") {
                return Err(Error::Unsupported(format!("rope_type \"{kind}\"; only the default RoPE is supported")));
            }
        }
        let rope_theta = raw
            .rope_theta
            .or_else(|| raw.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .ok_or_else(|| Error::config(path, "missing \"rope_theta\" (or \"rope_parameters.rope_theta\")"))?;

        let hidden_size = required(raw.hidden_size, "hidden_size", path)?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads", path)?;
        let num_key_value_heads =
            required(raw.num_key_value_heads.or(Some(num_attention_heads)), "num_key_value_heads", path)?;
        let head_dim = match raw.head_dim {
            Some(d) => required(Some(d), "head_dim", path)?,
            None => hidden_size / num_attention_heads,
        };
        let config = Qwen3Config {
            vocab_size: required(raw.vocab_size, "vocab_size", path)?,
            hidden_size,
            intermediate_size: required(raw.intermediate_size, "intermediate_size", path)?,
            num_hidden_layers: required(raw.num_hidden_layers, "num_hidden_layers", path)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: required(raw.max_position_embeddings, "max_position_embeddings", path)?,
            attention_bias: raw.attention_bias.unwrap_or(false),
            // transformers' Qwen3Config default.
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            saved_dtype: raw.torch_dtype.or(raw.dtype),
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::config(
                path,
                format!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(Error::config(path, format!("head_dim {head_dim} must be even for rotary embeddings")));
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(Error::config(path, format!("rope_theta {rope_theta} must be positive")));
        }
        Ok(config)
    }

    /// Parameters outside the token embedding: what every token pays for in matrix multiplications.
    pub fn non_embedding_parameters(&self) -> usize {
        let (h, hd) = (self.hidden_size, self.head_dim);
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let attention = h * q + 2 * h * kv + q * h + 2 * hd;
        let mlp = 3 * h * self.intermediate_size;
        self.num_hidden_layers * (attention + mlp + 2 * h) + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
    }

    #[test]
    fn reads_the_real_qwen3_embedding_config() {
        let c = Qwen3Config::from_file(&fixture("qwen3-embedding-0.6b/config.json")).unwrap();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (1024, 28, 16, 8, 128)
        );
        assert_eq!((c.intermediate_size, c.vocab_size, c.max_position_embeddings), (3072, 151669, 32768));
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.saved_dtype.as_deref(), Some("bfloat16"));
        // 0.6B = 596M parameters, 155M of them the token embedding.
        let p = c.non_embedding_parameters();
        assert!((430_000_000..450_000_000).contains(&p), "{p}");
    }

    #[test]
    fn reads_the_transformers_5_form() {
        let c = Qwen3Config::from_file(&fixture("tiny-qwen3/config.json")).unwrap();
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!((c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim), (64, 4, 2, 24));
        assert_eq!(c.saved_dtype.as_deref(), Some("bfloat16"));
    }

    fn parse(json: &str) -> Result<Qwen3Config> {
        Qwen3Config::from_json(json, Path::new("config.json"))
    }

    const BASE: &str = r#""hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "max_position_embeddings": 64, "vocab_size": 10"#;

    #[test]
    fn head_dim_defaults_to_hidden_over_heads() {
        let c = parse(&format!(r#"{{"model_type": "qwen3", "rope_theta": 5.0, {BASE}}}"#)).unwrap();
        assert_eq!(c.head_dim, 4);
    }

    #[test]
    fn rejects_other_architectures_by_name() {
        let err = parse(&format!(r#"{{"model_type": "bert", "architectures": ["BertModel"], {BASE}}}"#)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"bert\"") && msg.contains("BertModel") && msg.contains("qwen3"), "{msg}");
    }

    #[test]
    fn rejects_missing_rope_theta_and_bad_numbers() {
        let msg = parse(&format!(r#"{{"model_type": "qwen3", {BASE}}}"#)).unwrap_err().to_string();
        assert!(msg.contains("rope_theta"), "{msg}");
        let msg = parse(r#"{"model_type": "qwen3", "rope_theta": 1.0, "hidden_size": 0}"#).unwrap_err().to_string();
        assert!(msg.contains("hidden_size") && msg.contains("positive"), "{msg}");
        let msg = parse("{not json").unwrap_err().to_string();
        assert!(msg.contains("not valid JSON"), "{msg}");
        let bad_heads = BASE.replace("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3");
        let msg =
            parse(&format!(r#"{{"model_type": "qwen3", "rope_theta": 1.0, {bad_heads}}}"#)).unwrap_err().to_string();
        assert!(msg.contains("multiple"), "{msg}");
    }

    #[test]
    fn rejects_scaled_rope() {
        let json =
            format!(r#"{{"model_type": "qwen3", "rope_theta": 1.0, "rope_scaling": {{"rope_type": "yarn"}}, {BASE}}}"#);
        assert!(parse(&json).unwrap_err().to_string().contains("yarn"));
    }
}
