//! Triggers that keep a vector column equal to the embedding of a text column:
//! - `qwen_embed_trigger(text_column, vector_column [, instruct])`, AFTER INSERT or UPDATE … FOR EACH STATEMENT: embeds
//!   the statement's rows that have text and no vector in batched forward passes (not one pass per row) and writes
//!   the vectors back by primary key;
//! - `qwen_embed_clear_on_change(text_column, vector_column)`, BEFORE UPDATE … FOR EACH ROW: a row whose text changes
//!   loses its vector, so the statement trigger embeds it again.
//!
//! `qwen_embed.create_embedding_triggers(...)` (sql/create_embedding_triggers.sql) creates all three for a table.
//!
//! Every name in the SQL it runs is quoted and schema-qualified, and parameters are bound with their type OIDs, so the
//! caller's search_path cannot redirect it.

use pgrx::datum::DatumWithOid;
use pgrx::datum::TryFromDatumError;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal};
use pgrx::{AnyElement, PgSqlErrorCode, WhoAllocated};

use crate::errors::raise_with;
use crate::runtime;
use crate::vector::{vector_type_oid, Vector};

/// Rows embedded per call into the encoder (the encoder batches them further by token budget).
const ROWS_PER_CHUNK: usize = 1024;

fn misuse(message: String, hint: &str) -> ! {
    raise_with(PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED, message, Some(hint.into()))
}

const USAGE: &str = "Use SELECT qwen_embed.create_embedding_triggers('table', 'text_column', 'vector_column'): it \
    creates the AFTER INSERT and AFTER UPDATE statement triggers (qwen_embed_trigger, REFERENCING NEW TABLE) and the \
    BEFORE UPDATE row trigger (qwen_embed_clear_on_change) that the UPDATE one needs.";

#[pg_trigger]
fn qwen_embed_trigger<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let (text_col, vector_col, instruct) = trigger_args(t)?;
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
    let relid = t.relid()?;
    let table = format!("{}.{}", quote_identifier(t.table_schema()?), quote_identifier(t.table_name()?));

    Spi::connect_mut(|client| {
        // pgrx does not expose transition tables to SPI by itself.
        // SAFETY: the trigger data is PostgreSQL's for this call of the trigger, valid for the whole SPI connection.
        unsafe { pg_sys::SPI_register_trigger_data(t.trigger_data() as *const _ as *mut _) };
        let (pk, pk_type) = primary_key(client, relid, &table);
        check_columns(client, relid, &table, &text_col, &vector_col);
        if is_update {
            require_clear_on_change(client, relid, &table, &text_col, &vector_col);
        }
        let (pk_q, text_q, vector_q) =
            (quote_identifier(&pk), quote_identifier(&text_col), quote_identifier(&vector_col));
        // The rows to embed are those without a vector: new rows, and updated rows whose text changed (the row
        // trigger cleared their vector, having seen OLD and NEW). Pairing old and new rows here, by key, would go
        // wrong for statements that change the key.
        let query = format!(
            "SELECT n.{pk_q}, n.{text_q} FROM {} n WHERE n.{vector_q} IS NULL AND n.{text_q} IS NOT NULL",
            quote_identifier(&new_rows)
        );
        let mut rows: Vec<(AnyElement, String)> = Vec::new();
        for row in client.select(&query, None, &[]).unwrap_or_else(|e| error!("qwen_embed_trigger: {e}")) {
            let key = row
                .get::<AnyElement>(1)
                .ok()
                .flatten()
                .unwrap_or_else(|| error!("qwen_embed_trigger: NULL primary key"));
            let text = row.get::<String>(2).ok().flatten().unwrap_or_else(|| error!("qwen_embed_trigger: NULL text"));
            rows.push((key, text));
        }
        if rows.is_empty() {
            return;
        }
        let vector_oid = vector_type_oid();
        let update = client
            .prepare_mut(
                &format!("UPDATE {table} SET {vector_q} = $1 WHERE {pk_q} OPERATOR(pg_catalog.=) $2"),
                &[PgOid::from(vector_oid), PgOid::from(pk_type)],
            )
            .unwrap_or_else(|e| error!("qwen_embed_trigger: {e}"));
        for chunk in rows.chunks(ROWS_PER_CHUNK) {
            let texts: Vec<String> = chunk.iter().map(|(_, text)| text.clone()).collect();
            let vectors = runtime::embed_texts(texts, instruct.clone(), None);
            for ((key, _), vector) in chunk.iter().zip(vectors) {
                // SAFETY: each datum is paired with the oid of the type it was made from (vector, and the key's own).
                let args =
                    unsafe { [DatumWithOid::new(Vector(vector), vector_oid), DatumWithOid::new(*key, key.oid())] };
                client.update(&update, None, &args).unwrap_or_else(|e| error!("qwen_embed_trigger: {e}"));
            }
        }
    });
    Ok(None)
}

/// `qwen_embed_clear_on_change(text_column, vector_column)`: BEFORE UPDATE … FOR EACH ROW. When a row's text changes,
/// its vector becomes NULL, for the statement-level trigger to embed the new text. A row trigger sees each row's OLD
/// and NEW exactly, whatever the statement does to the key. (create_embedding_triggers adds a WHEN clause that also
/// leaves rows alone whose vector the statement sets itself.)
#[pg_trigger]
fn qwen_embed_clear_on_change<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, PgTriggerError> {
    let (text_col, vector_col, _) = trigger_args(t)?;
    if !matches!(t.when()?, PgTriggerWhen::Before)
        || !matches!(t.level(), PgTriggerLevel::Row)
        || !matches!(t.op()?, PgTriggerOperation::Update)
    {
        misuse("qwen_embed_clear_on_change must be a BEFORE UPDATE … FOR EACH ROW trigger".into(), USAGE);
    }
    let old = t.old().unwrap_or_else(|| misuse("qwen_embed_clear_on_change: no OLD row".into(), USAGE));
    let mut new =
        t.new().unwrap_or_else(|| misuse("qwen_embed_clear_on_change: no NEW row".into(), USAGE)).into_owned();
    // Compared as text; a column that cannot be read as text counts as changed (an extra embedding, never a stale one).
    let text_changed = match (text_of(&old, &text_col), text_of(&new, &text_col)) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    };
    if text_changed {
        let (attno, _) = new.get_attribute_by_name(&vector_col).unwrap_or_else(|| {
            misuse(format!("qwen_embed_clear_on_change: no column {}", quote_literal(&vector_col)), USAGE)
        });
        // SAFETY: NULL is a valid value of any column type (no datum is written).
        unsafe { new.set_by_index_unchecked(attno, None) };
    }
    Ok(Some(new))
}

fn text_of<A: WhoAllocated>(row: &PgHeapTuple<'_, A>, column: &str) -> Result<Option<String>, TryFromDatumError> {
    row.get_by_name::<String>(column)
}

/// The trigger arguments: text column, vector column and an optional instruction.
fn trigger_args(t: &PgTrigger<'_>) -> Result<(String, String, Option<String>), PgTriggerError> {
    let args = t.extra_args()?;
    Ok(match args.as_slice() {
        [text, vector] => (text.clone(), vector.clone(), None),
        [text, vector, instruct] => (text.clone(), vector.clone(), Some(instruct.clone())),
        _ => misuse(format!("{} takes 2 or 3 arguments, got {}", t.name()?, args.len()), USAGE),
    })
}

/// An UPDATE trigger without the row trigger that clears changed rows' vectors would leave stale vectors: refuse.
fn require_clear_on_change(
    client: &pgrx::spi::SpiClient<'_>,
    relid: pg_sys::Oid,
    table: &str,
    text_col: &str,
    vector_col: &str,
) {
    let args: Vec<u8> = [text_col.as_bytes(), b"\0", vector_col.as_bytes(), b"\0"].concat();
    let found = client
        .select(
            "SELECT count(*) FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
              WHERE t.tgrelid = $1 AND p.proname = 'qwen_embed_clear_on_change' AND t.tgenabled <> 'D'
                AND t.tgnargs = 2 AND t.tgargs = $2",
            None,
            &[relid.into(), args.into()],
        )
        .ok()
        .and_then(|rows| rows.first().get_one::<i64>().ok().flatten())
        .unwrap_or(0);
    if found == 0 {
        misuse(
            format!(
                "qwen_embed_trigger: the UPDATE trigger on {table} needs the row trigger qwen_embed_clear_on_change({}, {})",
                quote_literal(text_col),
                quote_literal(vector_col)
            ),
            USAGE,
        );
    }
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
extension_sql_file!(
    "../sql/create_embedding_triggers.sql",
    requires = [qwen_embed_trigger, qwen_embed_clear_on_change, "qwen_embed_schema"]
);
