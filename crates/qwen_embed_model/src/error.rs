//! One error type for the model core. Every message names the file, tensor or limit involved, so a user can act on it
//! without reading the source; `hint()` adds the "what to do" line that the SQL layer shows as an ERROR's HINT.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model directory \"{}\" {problem}", path.display())]
    ModelDir { path: PathBuf, problem: String },

    #[error("could not read \"{}\": {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("invalid model config \"{}\": {problem}", path.display())]
    Config { path: PathBuf, problem: String },

    #[error("unsupported model: {0}")]
    Unsupported(String),

    #[error("invalid weights in \"{}\": {problem}", path.display())]
    Weights { path: PathBuf, problem: String },

    #[error("tensor \"{name}\" has shape {found:?}, expected {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("could not load tokenizer \"{}\": {problem}", path.display())]
    Tokenizer { path: PathBuf, problem: String },

    #[error("input is {tokens} tokens long, which exceeds max_length {limit}")]
    TooLong { tokens: usize, limit: usize },

    /// A reranker input (prompt, query and document) over the limit; the same message, its own hint.
    #[error("input is {tokens} tokens long, which exceeds max_length {limit}")]
    PairTooLong { tokens: usize, limit: usize },

    /// A reranker length limit below what the prompt around the pair takes: truncation cannot help.
    #[error("max_length {limit} leaves no room for the pair: the reranker's prompt alone takes {prompt} tokens")]
    NoRoomForPair { prompt: usize, limit: usize },

    #[error("dim must be between {min} and {max}, got {dim}")]
    BadDim { dim: i64, min: usize, max: usize },

    #[error("invalid chunking: {0}")]
    BadChunking(String),

    #[error("unknown weighting \"{0}\"")]
    BadWeighting(String),

    #[error("not enough memory to load the model: it needs about {} MB, {} MB is left under {limit}", needed >> 20, available >> 20)]
    OutOfMemory { needed: u64, available: u64, limit: String },

    /// A forward pass that the GPU had no memory for (CUDA reports it as an allocation failure mid-pass).
    #[error("not enough GPU memory for a forward pass over {rows} × {len} tokens: {} MB of the GPU's {} MB is free", free >> 20, total >> 20)]
    GpuOutOfMemory { rows: usize, len: usize, free: u64, total: u64 },

    #[error("embedding canceled")]
    Canceled,

    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// What kind of failure an error is, for callers that branch on it (the SQL layer maps each kind to a SQLSTATE) and
/// for carrying an error between processes with its message and hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// An input over the length limit.
    TooLong,
    /// A bad argument: dim, chunking, weighting.
    BadArgument,
    Canceled,
    OutOfMemory,
    /// The model directory or one of its required files is missing.
    ModelMissing,
    /// A file could not be read.
    Unreadable,
    /// Not a Qwen3 model, or an unsupported dtype or tensor type.
    Unsupported,
    /// A broken config, tokenizer or weights file.
    BadModel,
    /// A failure inside the computation.
    Compute,
}

impl Error {
    /// A computation that failed for a reason of its own (not candle's): an input the encoder cannot take, a request
    /// the server dropped.
    pub fn compute(message: impl Into<String>) -> Error {
        Error::Compute(candle_core::Error::Msg(message.into()))
    }

    /// A panic caught while computing, as an error: the encoder's bug is this request's ERROR, not the process's end.
    pub fn from_panic(panic: &(dyn std::any::Any + Send)) -> Error {
        Error::compute(format!("internal error in the encoder: {}", panic_message(panic)))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::TooLong { .. } | Error::PairTooLong { .. } | Error::NoRoomForPair { .. } => ErrorKind::TooLong,
            Error::BadDim { .. } | Error::BadChunking(_) | Error::BadWeighting(_) => ErrorKind::BadArgument,
            Error::Canceled => ErrorKind::Canceled,
            Error::OutOfMemory { .. } | Error::GpuOutOfMemory { .. } => ErrorKind::OutOfMemory,
            Error::ModelDir { .. } => ErrorKind::ModelMissing,
            Error::Io { .. } => ErrorKind::Unreadable,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Config { .. } | Error::Weights { .. } | Error::Shape { .. } | Error::Tokenizer { .. } => {
                ErrorKind::BadModel
            }
            Error::Compute(_) => ErrorKind::Compute,
        }
    }

    /// A line telling the user what to do about the error, where there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::ModelDir { .. } => Some(
                "Point qwen_embed.model_path (reranker_path for the reranker) at a Hugging Face model directory with config.json, tokenizer.json and \
                 model.safetensors (or model.safetensors.index.json and its shards)."
                    .into(),
            ),
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => Some(
                "The database server's operating-system user must be able to read the model files (chmod a+r).".into(),
            ),
            Error::Io { .. } => Some("Check that the model files exist and are complete.".into()),
            Error::Unsupported(_) | Error::Config { .. } => {
                Some("qwen_embed runs Qwen3-architecture models such as Qwen/Qwen3-Embedding-0.6B.".into())
            }
            Error::Weights { .. } | Error::Shape { .. } => Some(
                "The weights do not match config.json; download the model again (the file may be truncated).".into(),
            ),
            Error::TooLong { .. } => Some(
                "Raise qwen_embed.max_length, set qwen_embed.truncate = on to embed only the beginning, or split the \
                 text into chunks."
                    .into(),
            ),
            Error::PairTooLong { .. } => Some(
                "Raise qwen_embed.max_length, or set qwen_embed.truncate = on to score only the beginning of the \
                 document (the prompt around it is never cut)."
                    .into(),
            ),
            Error::NoRoomForPair { prompt, .. } => {
                Some(format!("Set qwen_embed.max_length well above {prompt} (8192 by default)."))
            }
            Error::BadDim { .. } => Some("Pass NULL for the model's full dimension.".into()),
            Error::OutOfMemory { .. } => Some(
                "Each backend that embeds holds its own copy of the model: use fewer such backends (a connection \
                 pool), qwen_embed.dtype = 'bf16' (half the memory of f32), a smaller model, or raise the limit."
                    .into(),
            ),
            Error::GpuOutOfMemory { .. } => Some(
                "Lower qwen_embed.batch_tokens (qwen_embed.server_batch_tokens for the model server: the tokens \
                 of one pass, padding included), or free GPU memory: nvidia-smi shows which processes hold it."
                    .into(),
            ),
            Error::BadChunking(_) => Some(
                "chunk_tokens counts the tokens of a chunk including the closing token; overlap is how many tokens \
                 consecutive chunks share."
                    .into(),
            ),
            Error::BadWeighting(_) => Some("Use 'uniform', 'position' or 'tokens'.".into()),
            _ => None,
        }
    }

    pub(crate) fn config(path: &std::path::Path, problem: impl Into<String>) -> Self {
        Error::Config { path: path.to_path_buf(), problem: problem.into() }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
}

/// What a caught panic says (its payload is a `&str` or a `String` when it came from `panic!` or a failed assert).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "panic".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_says_what_it_said() {
        let caught = |f: fn()| std::panic::catch_unwind(f).unwrap_err();
        let (fixed, formatted) = (caught(|| panic!("fixed")), caught(|| panic!("formatted {}", 7)));
        assert_eq!(
            (panic_message(fixed.as_ref()), panic_message(formatted.as_ref())),
            ("fixed".into(), "formatted 7".into())
        );
        let other = caught(|| std::panic::panic_any(7u8));
        assert_eq!(panic_message(other.as_ref()), "panic");
        assert_eq!(Error::from_panic(fixed.as_ref()).kind(), ErrorKind::Compute);
        assert!(Error::from_panic(fixed.as_ref()).to_string().contains("internal error in the encoder: fixed"));
    }
}
