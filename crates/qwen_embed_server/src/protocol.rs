//! Messages between backends and the model server: one request and one reply per connection, each a frame of a
//! 4-byte little-endian length and a bincode body. A caller that goes away closes its connection; that is how the
//! server learns a request was canceled.

use std::io::{self, Read, Write};

use qwen_embed_model::device::{select_device, select_dtype};
use qwen_embed_model::{DType, Device, ErrorKind, LengthPolicy, Limits};
use serde::{Deserialize, Serialize};

/// Frames larger than this are refused (a request of 100,000 texts of 1 kB is 100 MB).
pub const MAX_FRAME: usize = 1 << 30;

/// The model a request is for: the server answers only requests for the model it runs. (A backend keys the model it
/// loads for itself with it too: changing any of its settings loads it again.)
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct ModelSpec {
    pub path: String,
    pub device: String,
    pub dtype: String,
}

impl ModelSpec {
    /// The device and dtype its settings name, or which of the two is wrong and why (`device: …`, `dtype: …`): the
    /// one reading of the settings for a backend's own model, the server's, and the test of two specs for one model.
    pub fn placement(&self) -> Result<(Device, DType), String> {
        let device = select_device(&self.device).map_err(|m| format!("device: {m}"))?;
        let dtype = select_dtype(&self.dtype, &device).map_err(|m| format!("dtype: {m}"))?;
        Ok((device, dtype))
    }
}

/// The length settings of the requesting session.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Lengths {
    pub max_length: usize,
    pub truncate: bool,
}

impl Lengths {
    /// A session's length limits as they travel (the batch budget stays behind: the server has its own).
    pub fn of(limits: &Limits) -> Lengths {
        Lengths { max_length: limits.max_length, truncate: limits.policy == LengthPolicy::Truncate }
    }

    /// The model's limits for a request with these lengths, computed in batches of at most `batch_tokens`.
    pub fn limits(self, batch_tokens: usize) -> Limits {
        let policy = if self.truncate { LengthPolicy::Truncate } else { LengthPolicy::Error };
        Limits { max_length: self.max_length, policy, batch_tokens }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum Job {
    /// Texts sharing an instruction; `dim` keeps the first dimensions (Matryoshka).
    Embed { texts: Vec<String>, instruct: Option<String>, dim: Option<i64> },
    /// A long document in chunks.
    Chunks { doc: String, chunk_tokens: usize, overlap: usize, dim: Option<i64> },
    /// One vector for a long document.
    Document { doc: String, chunk_tokens: usize, overlap: usize, weighting: String, dim: Option<i64> },
    /// Scores of documents for a query, from the server's reranker (the request's `model` names the reranker).
    Rerank { query: String, documents: Vec<String>, instruct: Option<String> },
    /// Tokens of a text as the model sees it, before any length limit.
    CountTokens { text: String, instruct: Option<String> },
    /// The server's state and counters.
    Status,
}

impl Job {
    /// The kinds of job, as the server's counters name them.
    pub const KINDS: [&'static str; 5] = ["embed", "chunks", "document", "rerank", "count_tokens"];

    /// This job's kind (one of [`Job::KINDS`]; None for a status request).
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Job::Embed { .. } => Some("embed"),
            Job::Chunks { .. } => Some("chunks"),
            Job::Document { .. } => Some("document"),
            Job::Rerank { .. } => Some("rerank"),
            Job::CountTokens { .. } => Some("count_tokens"),
            Job::Status => None,
        }
    }
}

/// Whose work is served first: a batch takes from the first class that has work waiting, and a bulk batch of a
/// later class pauses at its next layer while an interactive batch computes.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub enum Priority {
    /// A session waiting for its result (`embed()` in a query, a sync trigger).
    #[default]
    Interactive,
    /// The async embedding worker; and, in the server's queue, the chunks of a session's large document (bulk work
    /// that yields to queries as the worker's does).
    Async,
    /// `CALL qwen_embed.backfill`.
    Backfill,
}

impl Priority {
    /// Every class, first served first: in declaration order, so `priority as usize` is its index here.
    pub const ALL: [Priority; 3] = [Priority::Interactive, Priority::Async, Priority::Backfill];

    /// Its name as `qwen_embed.priority` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Async => "async",
            Priority::Backfill => "backfill",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Request {
    /// Who asks (a backend's pid), for per-session counts.
    pub client: i32,
    pub priority: Priority,
    pub model: ModelSpec,
    pub lengths: Lengths,
    pub job: Job,
}

/// What a request cost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub texts: u64,
    pub tokens: u64,
    /// Forward passes the request took part in (shared with other requests).
    pub forward_passes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum Reply {
    Vectors {
        vectors: Vec<Vec<f32>>,
        cost: Cost,
    },
    /// Byte ranges in the document and their vectors.
    Chunks {
        chunks: Vec<(usize, usize, Vec<f32>)>,
        cost: Cost,
    },
    Vector {
        vector: Vec<f32>,
        cost: Cost,
    },
    Count(usize),
    /// Reranker scores, in the order of the documents.
    Scores {
        scores: Vec<f64>,
        cost: Cost,
    },
    Status(Box<Status>),
    /// A model error, as the model core reported it.
    Failed {
        kind: ErrorKind,
        message: String,
        hint: Option<String>,
    },
    /// The server runs another model than the request asks for.
    OtherModel {
        serving: ModelSpec,
    },
    /// The queue is full.
    Overloaded {
        queued_texts: usize,
        limit: usize,
    },
}

impl Reply {
    /// A model error as the caller gets it: its kind (the SQLSTATE the backend raises), message and hint.
    pub fn failed(e: &qwen_embed_model::Error) -> Reply {
        Reply::Failed { kind: e.kind(), message: e.to_string(), hint: e.hint() }
    }
}

/// The server's state and counters since it started.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Status {
    pub pid: i32,
    pub model: ModelSpec,
    /// "loading", "ready" or "failed: …".
    pub state: String,
    pub device: String,
    pub dtype: String,
    /// The linear layers' kernel (`Precision::kernel_name`).
    pub kernel: String,
    pub load_ms: f64,
    pub threads: usize,
    pub batch_tokens: usize,
    pub queue_limit: usize,
    pub queued_requests: usize,
    pub queued_texts: usize,
    /// Texts in the batches computing now.
    pub computing_texts: usize,
    pub requests: u64,
    pub canceled: u64,
    pub rejected: u64,
    pub errors: u64,
    pub texts: u64,
    pub tokens: u64,
    pub batches: u64,
    /// Of those, the reranker's.
    pub reranker_batches: u64,
    /// Times a batch waited at a layer boundary while a more urgent batch computed (`queue::Urgency`).
    pub pauses: u64,
    /// Failed batches of several requests, computed again one request at a time.
    pub batches_split: u64,
    pub max_batch_texts: u64,
    pub max_batch_tokens: u64,
    /// The longest text computed: a batch is within `batch_tokens` or is that one text alone.
    pub max_text_tokens: u64,
    /// The reranker the server runs when asked (loaded on first use), and its state: "not loaded", "ready" or
    /// "failed: …"; empty path when none is configured.
    pub reranker: ModelSpec,
    pub reranker_state: String,
    /// Bytes its heap has in use (None where the allocator cannot say), and the times it returned its free memory to
    /// the system after falling idle ([`crate::heap`]).
    pub heap_bytes_in_use: Option<u64>,
    pub idle_trims: u64,
    /// Requests per client pid, for the clients still running among those seen most recently.
    pub per_client: Vec<(i32, u64)>,
    /// Counts per kind of job, in the order of [`Job::KINDS`].
    pub jobs: Vec<JobCounts>,
    /// Requests per priority their caller gave, in the order of [`Priority::ALL`].
    pub priorities: [u64; 3],
}

/// Requests of one kind of job since the server started; `texts` and `tokens` count the sequences computed for the
/// answered ones (a text, a document's chunk, a rerank's query-document pair).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub kind: String,
    pub requests: u64,
    pub canceled: u64,
    pub texts: u64,
    pub tokens: u64,
}

/// The size of a reply of `chunks` chunks of `dims` floats each, serialised. Asked once a document's chunks are
/// planned, before their passes: a reply over [`MAX_FRAME`] could not be sent, and would be refused after all the work.
pub fn chunks_reply_size(chunks: usize, dims: usize) -> u64 {
    let size = |chunks| bincode::serialized_size(&Reply::Chunks { chunks, cost: Cost::default() }).unwrap_or(u64::MAX);
    let (none, one) = (size(Vec::new()), size(vec![(0, 0, vec![0.0; dims])]));
    none.saturating_add((chunks as u64).saturating_mul(one - none))
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> io::Result<()> {
    // Sized before it is serialised: a message over the limit costs no second copy of itself (a backend holding a
    // 1 GiB array of texts would otherwise allocate another GiB only to refuse it).
    let size = bincode::serialized_size(message).map_err(io::Error::other)?;
    if size > MAX_FRAME as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("message of {size} bytes is too large")));
    }
    let body = bincode::serialize(message).map_err(io::Error::other)?;
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    bincode::deserialize(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let request = Request {
            client: 42,
            priority: Priority::Async,
            model: ModelSpec { path: "/m".into(), device: "cpu".into(), dtype: "auto".into() },
            lengths: Lengths { max_length: 8192, truncate: false },
            job: Job::Embed { texts: vec!["a".into(), "ü 北京".into()], instruct: None, dim: Some(32) },
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &request).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back.client, 42);
        assert!(matches!(back.job, Job::Embed { ref texts, dim: Some(32), .. } if texts[1] == "ü 北京"));
        // A truncated frame is an error, not a hang or a partial message.
        assert!(read_frame::<Request>(&mut &buf[..buf.len() - 1]).is_err());
    }

    /// The process's peak resident memory (VmHWM), KiB.
    fn peak_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_message_over_the_limit_is_refused_without_being_serialised() {
        // 1,025 references to one 1 MiB text: over 1 GiB serialised, 1 MiB in memory. No other test of this binary
        // comes near 512 MiB, so the peak says whether the message was serialised before it was refused.
        let text = "x".repeat(1 << 20);
        let texts = vec![text.as_str(); (MAX_FRAME >> 20) + 1];
        let before = peak_kib();
        let mut sink = Vec::new();
        let err = write_frame(&mut sink, &texts).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        assert!(sink.is_empty(), "part of a refused frame was written");
        let grew = peak_kib() - before;
        assert!(grew < 512 << 10, "refusing the message raised the peak by {grew} KiB");
        // A frame that announces more than the limit is refused before its body is allocated.
        let announced = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(read_frame::<Request>(&mut announced.as_slice()).unwrap_err().to_string().contains("too large"));
    }

    #[test]
    fn a_chunks_replys_size_is_known_before_its_vectors_are() {
        let reply = Reply::Chunks {
            chunks: (0..3).map(|i| (i, i + 7, vec![0.5; 5])).collect(),
            cost: Cost { texts: 3, tokens: 21, forward_passes: 1 },
        };
        assert_eq!(chunks_reply_size(3, 5), bincode::serialized_size(&reply).unwrap());
        assert_eq!(
            chunks_reply_size(0, 1024),
            bincode::serialized_size(&Reply::Chunks { chunks: vec![], cost: Cost::default() }).unwrap()
        );
    }

    #[test]
    fn lengths_travel_both_ways_unchanged() {
        for truncate in [false, true] {
            let lengths = Lengths { max_length: 77, truncate };
            let limits = lengths.limits(640);
            assert_eq!((limits.batch_tokens, Lengths::of(&limits)), (640, lengths));
        }
    }
}
