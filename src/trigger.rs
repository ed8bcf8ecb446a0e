//! `qwen_embed_trigger(text_column, vector_column [, instruct])`: an AFTER … FOR EACH STATEMENT trigger that embeds the
//! statement's new or changed rows in batched forward passes (not one pass per row) and writes the vectors back by
//! primary key. `qwen_embed.create_embedding_triggers(...)` creates the INSERT and UPDATE triggers for a table.
//!
//! Every name in the SQL it runs is quoted and schema-qualified, and parameters are bound with their type OIDs, so the
//! caller's search_path cannot redirect it.

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal};
use pgrx::{AnyElement, PgSqlErrorCode};

use crate::errors::raise_with;
use crate::runtime;
use crate::vector::{vector_type_oid, Vector};

/// Rows embedded per call into the encoder (the encoder batches them further by token budget).
const ROWS_PER_CHUNK: usize = 1024;

fn misuse(message: String, hint: &str) -> ! {
    raise_with(PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, message, Some(hint.into()))
}

const USAGE: &str = "Use SELECT qwen_embed.create_embedding_triggers('table', 'text_column', 'vector_column'), or \
    CREATE TRIGGER … AFTER INSERT ON t REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION \
    qwen_embed_trigger('text_column', 'vector_column') and the same AFTER UPDATE with OLD TABLE AS old_rows too.";

#[pg_trigger]
fn qwen_embed_trigger<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let args = t.extra_args()?;
    let (text_col, vector_col, instruct) = match args.as_slice() {
        [text, vector] => (text.clone(), vector.clone(), None),
        [text, vector, instruct] => (text.clone(), vector.clone(), Some(instruct.clone())),
        _ => misuse(format!("qwen_embed_trigger takes 2 or 3 arguments, got {}", args.len()), USAGE),
    };
    if !matches!(t.when()?, PgTriggerWhen::After) || !matches!(t.level(), PgTriggerLevel::Statement) {
        misuse("qwen_embed_trigger must be an AFTER … FOR EACH STATEMENT trigger".into(), USAGE);
    }
    let is_update = match t.op()? {
        PgTriggerOperation::Insert => false,
        PgTriggerOperation::Update => true,
        _ => misuse("qwen_embed_trigger handles INSERT and UPDATE only".into(), USAGE),
    };
    let new_rows = t
        .new_transition_table_name()?
        .unwrap_or_else(|| misuse("qwen_embed_trigger needs REFERENCING NEW TABLE".into(), USAGE))
        .to_string();
    let old_rows = if is_update {
        Some(
            t.old_transition_table_name()?
                .unwrap_or_else(|| {
                    misuse("on UPDATE, qwen_embed_trigger needs REFERENCING OLD TABLE too".into(), USAGE)
                })
                .to_string(),
        )
    } else {
        None
    };
    let relid = t.relid()?;
    let table = format!("{}.{}", quote_identifier(t.table_schema()?), quote_identifier(t.table_name()?));

    Spi::connect_mut(|client| {
        // pgrx does not expose transition tables to SPI by itself.
        unsafe { pg_sys::SPI_register_trigger_data(t.trigger_data() as *const _ as *mut _) };
        let (pk, pk_type) = primary_key(client, relid, &table);
        check_columns(client, relid, &table, &text_col, &vector_col);
        let (pk_q, text_q) = (quote_identifier(&pk), quote_identifier(&text_col));
        let query = match &old_rows {
            None => format!(
                "SELECT n.{pk_q}, n.{text_q} FROM {} n WHERE n.{text_q} IS NOT NULL",
                quote_identifier(&new_rows)
            ),
            Some(old) => format!(
                "SELECT n.{pk_q}, n.{text_q} FROM {} n JOIN {} o ON o.{pk_q} OPERATOR(pg_catalog.=) n.{pk_q} \
                 WHERE n.{text_q} IS DISTINCT FROM o.{text_q}",
                quote_identifier(&new_rows),
                quote_identifier(old)
            ),
        };
        let mut rows: Vec<(AnyElement, Option<String>)> = Vec::new();
        for row in client.select(&query, None, &[]).unwrap_or_else(|e| error!("qwen_embed_trigger: {e}")) {
            let key = row
                .get::<AnyElement>(1)
                .ok()
                .flatten()
                .unwrap_or_else(|| error!("qwen_embed_trigger: NULL primary key"));
            rows.push((key, row.get::<String>(2).ok().flatten()));
        }
        if rows.is_empty() {
            return;
        }
        let vector_oid = vector_type_oid();
        let update = client
            .prepare_mut(
                &format!(
                    "UPDATE {table} SET {} = $1 WHERE {pk_q} OPERATOR(pg_catalog.=) $2",
                    quote_identifier(&vector_col)
                ),
                &[PgOid::from(vector_oid), PgOid::from(pk_type)],
            )
            .unwrap_or_else(|e| error!("qwen_embed_trigger: {e}"));
        for chunk in rows.chunks(ROWS_PER_CHUNK) {
            let texts: Vec<String> = chunk.iter().filter_map(|(_, text)| text.clone()).collect();
            let mut vectors =
                if texts.is_empty() { Vec::new() } else { runtime::embed_texts(texts, instruct.clone(), None) }
                    .into_iter();
            for (key, text) in chunk {
                let vector = text.as_ref().and_then(|_| vectors.next()).map(Vector);
                let args = unsafe { [DatumWithOid::new(vector, vector_oid), DatumWithOid::new(*key, key.oid())] };
                client.update(&update, None, &args).unwrap_or_else(|e| error!("qwen_embed_trigger: {e}"));
            }
        }
    });
    Ok(None)
}

/// The table's single-column primary key and its type.
fn primary_key(client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, table: &str) -> (String, pg_sys::Oid) {
    let found = client
        .select(
            "SELECT a.attname::pg_catalog.text, a.atttypid FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = $1 AND i.indisprimary AND i.indnkeyatts = 1",
            None,
            &[relid.into()],
        )
        .ok()
        .and_then(|rows| rows.first().get_two::<String, pg_sys::Oid>().ok())
        .and_then(|(name, oid)| Some((name?, oid?)));
    found.unwrap_or_else(|| {
        misuse(
            format!("qwen_embed_trigger: table {table} has no single-column primary key"),
            "The trigger writes each row's vector back by primary key; add one, e.g. id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY.",
        )
    })
}

fn check_columns(client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, table: &str, text_col: &str, vector_col: &str) {
    let type_of = |col: &str| -> Option<pg_sys::Oid> {
        client
            .select(
                "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
                None,
                &[relid.into(), col.into()],
            )
            .ok()
            .and_then(|rows| rows.first().get_one::<pg_sys::Oid>().ok().flatten())
    };
    let no_column = |col: &str| -> ! {
        raise_with(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("qwen_embed_trigger: column {} of {table} does not exist", quote_literal(col)),
            Some(USAGE.into()),
        )
    };
    if type_of(text_col).is_none() {
        no_column(text_col);
    }
    match type_of(vector_col) {
        None => no_column(vector_col),
        Some(oid) if oid != vector_type_oid() => raise_with(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("qwen_embed_trigger: column {} of {table} is not of type vector", quote_literal(vector_col)),
            None,
        ),
        Some(_) => {}
    }
}

// `qwen_embed.create_embedding_triggers(...)`, the friendly way to attach this trigger, is plain SQL.
extension_sql_file!("../sql/create_embedding_triggers.sql", requires = [qwen_embed_trigger, "qwen_embed_schema"]);
