//! qwen_embed_server: the process that holds the one model of a cluster and serves every session, and the client that
//! sessions use to reach it. No PostgreSQL in here: the extension starts, supervises and configures the server
//! (`src/server/supervisor.rs`) and calls the client from backends (`src/server/client.rs`); everything below is plain
//! Rust, tested with `cargo test -p qwen_embed_server`. Shaped like text-embeddings-inference's router: requests are
//! tokenised where they arrive, queued, and batched across sessions by a scheduler that knows nothing of PostgreSQL or
//! of the model's internals.
//!
//! - [`protocol`]: the messages and their framing on a Unix socket
//! - [`queue`]: pending requests and the fair choice of the next batch
//! - [`server`]: the server: accept, tokenise, queue, batch, compute, answer; drop requests whose caller left
//! - [`models`]: the embedder and the reranker it serves, and their loads
//! - [`client`]: one request, waiting on the answer while the caller checks for interrupts
//! - [`heap`]: its free memory back to the system when the server falls idle, and the bytes in use

pub mod client;
pub mod heap;
pub mod models;
pub mod protocol;
pub mod queue;
pub mod server;
mod sync;
