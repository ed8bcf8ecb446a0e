//! `CALL qwen_embed.backfill(...)`: fills a vector column for existing rows, committing every batch, with progress in
//! `qwen_embed.backfill_status`. It is plain PL/pgSQL (sql/backfill.sql): a procedure that commits is simplest there,
//! and each batch is one call of the batched `embed(text[])`.

use pgrx::prelude::*;

extension_sql_file!("../../sql/backfill.sql", requires = [api::embed::embed_array, "qwen_embed_schema"]);
