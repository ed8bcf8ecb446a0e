//! The cluster's model server (`crates/qwen_embed_server`), seen from PostgreSQL: the background worker that runs it
//! in a child process and publishes where it is (`supervisor`), and a backend's calls to it (`client`).

pub mod client;
pub mod supervisor;
