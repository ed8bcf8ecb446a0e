//! The SQL surface: each file the functions (and hand-written SQL from `sql/`) of one feature. They check their
//! arguments and hand the work to `route`.

pub mod backfill;
pub mod documents;
pub mod embed;
pub mod info;
pub mod rerank;
pub mod trigger;
