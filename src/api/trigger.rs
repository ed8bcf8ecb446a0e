//! Triggers that keep a vector column equal to the embedding of a text column:
//! - `qwen_embed_trigger(text_column, vector_column [, instruct])`, AFTER INSERT or UPDATE … FOR EACH STATEMENT: embeds
//!   the statement's rows that have text and no vector in batched forward passes (not one pass per row) and writes
//!   the vectors back by primary key (one column or several);
//! - `qwen_embed_clear_on_change(text_column, vector_column)`, BEFORE UPDATE … FOR EACH ROW: a row whose text changes
//!   loses its vector, so the statement trigger embeds it again.
//!
//! `qwen_embed.create_embedding_triggers(...)` (sql/create_embedding_triggers.sql) creates all three for a table,
//! naming its registration instead of the columns (one argument, the id): the registration holds the columns by
//! number, so the triggers keep working when a column is renamed. Triggers made by hand name the columns.
//!
//! Every name in the SQL it runs is quoted and schema-qualified, and parameters are bound with their type OIDs, so the
//! caller's search_path cannot redirect it.

use pgrx::datum::DatumWithOid;
use pgrx::datum::TryFromDatumError;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal};
use pgrx::{AnyElement, PgSqlErrorCode, WhoAllocated};

use crate::postgres::errors::raise_with;
use crate::postgres::vector::{vector_type_oid, Vector};
use crate::route;

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
    let columns = trigger_args(t)?;
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
        let target = columns.resolve(client, relid, &table);
        check_columns(client, relid, &table, &target.text, &target.vector);
        if is_update {
            require_clear_on_change(client, relid, &table, &columns);
        }
        let key_types = key_types(client, relid, &target.key);
        let (text_q, vector_q) = (quote_identifier(&target.text), quote_identifier(&target.vector));
        let key_list: Vec<String> = target.key.iter().map(|k| format!("n.{}", quote_identifier(k))).collect();
        // The rows to embed are those without a vector: new rows, and updated rows whose text changed (the row
        // trigger cleared their vector, having seen OLD and NEW). Pairing old and new rows here, by key, would go
        // wrong for statements that change the key.
        let query = format!(
            "SELECT n.{text_q}, {} FROM {} n WHERE n.{vector_q} IS NULL AND n.{text_q} IS NOT NULL",
            key_list.join(", "),
            quote_identifier(&new_rows)
        );
        let mut rows: Vec<(Vec<AnyElement>, String)> = Vec::new();
        for row in client.select(&query, None, &[]).unwrap_or_else(|e| error!("qwen_embed_trigger: {e}")) {
            let text = row.get::<String>(1).ok().flatten().unwrap_or_else(|| error!("qwen_embed_trigger: NULL text"));
            let key = (0..target.key.len())
                .map(|i| {
                    row.get::<AnyElement>(i + 2)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| error!("qwen_embed_trigger: NULL primary key"))
                })
                .collect();
            rows.push((key, text));
        }
        if rows.is_empty() {
            return;
        }
        let vector_oid = vector_type_oid();
        let condition: Vec<String> = target
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} OPERATOR(pg_catalog.=) ${}", quote_identifier(k), i + 2))
            .collect();
        let mut types = vec![PgOid::from(vector_oid)];
        types.extend(key_types.iter().map(|&oid| PgOid::from(oid)));
        let update = client
            .prepare_mut(&format!("UPDATE {table} SET {vector_q} = $1 WHERE {}", condition.join(" AND ")), &types)
            .unwrap_or_else(|e| error!("qwen_embed_trigger: {e}"));
        for chunk in rows.chunks(ROWS_PER_CHUNK) {
            let texts: Vec<String> = chunk.iter().map(|(_, text)| text.clone()).collect();
            let vectors = route::embed_texts(texts, target.instruct.clone(), None);
            for ((key, _), vector) in chunk.iter().zip(vectors) {
                // SAFETY: each datum is paired with the oid of the type it was made from (vector, and the key's own).
                let mut args = vec![unsafe { DatumWithOid::new(Vector(vector), vector_oid) }];
                args.extend(key.iter().map(|k| unsafe { DatumWithOid::new(*k, k.oid()) }));
                client.update(&update, None, &args).unwrap_or_else(|e| error!("qwen_embed_trigger: {e}"));
            }
        }
    });
    Ok(None)
}

/// `qwen_embed_clear_on_change(registration)` or `(text_column, vector_column)`: BEFORE UPDATE … FOR EACH ROW. When a
/// row's text changes, its vector becomes NULL, for the statement-level trigger to embed the new text. A row trigger
/// sees each row's OLD and NEW exactly, whatever the statement does to the key. (create_embedding_triggers adds a
/// WHEN clause that also leaves rows alone whose vector the statement sets itself.)
#[pg_trigger]
fn qwen_embed_clear_on_change<'a>(
    t: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, PgTriggerError> {
    let columns = trigger_args(t)?;
    if !matches!(t.when()?, PgTriggerWhen::Before)
        || !matches!(t.level(), PgTriggerLevel::Row)
        || !matches!(t.op()?, PgTriggerOperation::Update)
    {
        misuse("qwen_embed_clear_on_change must be a BEFORE UPDATE … FOR EACH ROW trigger".into(), USAGE);
    }
    let old = t.old().unwrap_or_else(|| misuse("qwen_embed_clear_on_change: no OLD row".into(), USAGE));
    let mut new =
        t.new().unwrap_or_else(|| misuse("qwen_embed_clear_on_change: no NEW row".into(), USAGE)).into_owned();
    let (text_col, vector_col) = match columns {
        Columns::Named { text, vector, .. } => (text, vector),
        Columns::Registration(id) => registered_names(id),
    };
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

/// What a trigger's arguments name: a registration of create_embedding_triggers (its one argument, the id of its
/// `qwen_embed.async_tables` row, which holds the columns by number, so renaming a column changes nothing), or, for a
/// trigger made by hand, the text column, the vector column and an optional instruction by name.
enum Columns {
    Registration(i32),
    Named { text: String, vector: String, instruct: Option<String> },
}

/// The columns a statement trigger uses, under their names now.
struct Target {
    text: String,
    vector: String,
    instruct: Option<String>,
    key: Vec<String>,
}

impl Columns {
    fn resolve(&self, client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, table: &str) -> Target {
        match self {
            Columns::Named { text, vector, instruct } => Target {
                text: text.clone(),
                vector: vector.clone(),
                instruct: instruct.clone(),
                key: primary_key(client, relid, table),
            },
            Columns::Registration(id) => {
                let row = client
                    .select(
                        "SELECT text_column::text, vector_column::text, instruct, key_columns::text[]
                           FROM qwen_embed._async_columns($1)",
                        None,
                        &[(*id).into()],
                    )
                    .unwrap_or_else(|e| error!("qwen_embed_trigger: {e}"));
                let row = row.first();
                let name = |i: usize| row.get::<String>(i).ok().flatten().unwrap_or_default();
                Target {
                    text: name(1),
                    vector: name(2),
                    instruct: row.get::<String>(3).ok().flatten(),
                    key: row.get::<Vec<String>>(4).ok().flatten().unwrap_or_default(),
                }
            }
        }
    }

    /// The arguments of the row trigger that must go with this statement trigger, as pg_trigger.tgargs holds them.
    fn clear_on_change_args(&self) -> (i16, Vec<u8>) {
        match self {
            Columns::Registration(id) => (1, [id.to_string().as_bytes(), b"\0"].concat()),
            Columns::Named { text, vector, .. } => (2, [text.as_bytes(), b"\0", vector.as_bytes(), b"\0"].concat()),
        }
    }
}

/// A registration's text and vector columns under their names now (a row trigger: one lookup per changed row).
fn registered_names(id: i32) -> (String, String) {
    Spi::get_two_with_args::<String, String>(
        "SELECT text_column::text, vector_column::text FROM qwen_embed._async_columns($1)",
        &[id.into()],
    )
    .ok()
    .and_then(|(text, vector)| Some((text?, vector?)))
    .unwrap_or_else(|| error!("qwen_embed_clear_on_change: registration {id} has no columns"))
}

fn trigger_args(t: &PgTrigger<'_>) -> Result<Columns, PgTriggerError> {
    let args = t.extra_args()?;
    let name = t.name()?;
    Ok(match args.as_slice() {
        [id] => Columns::Registration(id.parse().unwrap_or_else(|_| {
            misuse(
                format!("{name} takes a registration id or 2 or 3 column arguments, got {}", quote_literal(id)),
                USAGE,
            )
        })),
        [text, vector] => Columns::Named { text: text.clone(), vector: vector.clone(), instruct: None },
        [text, vector, instruct] => {
            Columns::Named { text: text.clone(), vector: vector.clone(), instruct: Some(instruct.clone()) }
        }
        _ => misuse(format!("{name} takes 2 or 3 arguments, got {}", args.len()), USAGE),
    })
}

/// An UPDATE trigger without the row trigger that clears changed rows' vectors would leave stale vectors: refuse.
fn require_clear_on_change(client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, table: &str, columns: &Columns) {
    let (nargs, args) = columns.clear_on_change_args();
    let found = client
        .select(
            "SELECT count(*) FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
              WHERE t.tgrelid = $1 AND p.proname = 'qwen_embed_clear_on_change' AND t.tgenabled <> 'D'
                AND t.tgnargs = $2 AND t.tgargs = $3",
            None,
            &[relid.into(), nargs.into(), args.into()],
        )
        .ok()
        .and_then(|rows| rows.first().get_one::<i64>().ok().flatten())
        .unwrap_or(0);
    if found == 0 {
        let named = match columns {
            Columns::Registration(id) => id.to_string(),
            Columns::Named { text, vector, .. } => format!("{}, {}", quote_literal(text), quote_literal(vector)),
        };
        misuse(
            format!("qwen_embed_trigger: the UPDATE trigger on {table} needs the row trigger qwen_embed_clear_on_change({named})"),
            USAGE,
        );
    }
}

/// The table's primary key columns, in the key's order (one or several).
fn primary_key(client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, table: &str) -> Vec<String> {
    let found = client
        .select(
            "SELECT array_agg(a.attname::pg_catalog.text ORDER BY k.i) FROM pg_catalog.pg_index x
               CROSS JOIN LATERAL pg_catalog.unnest(x.indkey::pg_catalog.int2[]) WITH ORDINALITY k(attnum, i)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
              WHERE x.indrelid = $1 AND x.indisprimary",
            None,
            &[relid.into()],
        )
        .ok()
        .and_then(|rows| rows.first().get_one::<Vec<String>>().ok().flatten())
        .filter(|key| !key.is_empty());
    found.unwrap_or_else(|| {
        misuse(
            format!("qwen_embed_trigger: table {table} has no primary key"),
            "The trigger writes each row's vector back by primary key; add one, e.g. id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY.",
        )
    })
}

/// The types of the key columns, for the write-back's parameters.
fn key_types(client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, key: &[String]) -> Vec<pg_sys::Oid> {
    key.iter()
        .map(|column| {
            column_type(client, relid, column)
                .unwrap_or_else(|| error!("qwen_embed_trigger: key column {} is gone", quote_literal(column)))
        })
        .collect()
}

/// The type of the table's column `column`; `None` if it has none of that name.
fn column_type(client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, column: &str) -> Option<pg_sys::Oid> {
    client
        .select(
            "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            None,
            &[relid.into(), column.into()],
        )
        .ok()
        .and_then(|rows| rows.first().get_one::<pg_sys::Oid>().ok().flatten())
}

fn check_columns(client: &pgrx::spi::SpiClient<'_>, relid: pg_sys::Oid, table: &str, text_col: &str, vector_col: &str) {
    let type_of = |col: &str| column_type(client, relid, col);
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
    "../../sql/create_embedding_triggers.sql",
    requires = [qwen_embed_trigger, qwen_embed_clear_on_change, "async", "qwen_embed_schema"]
);
