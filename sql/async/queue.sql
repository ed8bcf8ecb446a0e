-- Asynchronous embedding, part 1 of 4: the queue's schema. Writes queue work, a background worker per database embeds
-- it (src/async_embed/). Then capture.sql (the writers' side), worker.sql (the worker's side), admin.sql (what users
-- call and see).
--
-- In async mode a table's triggers do not embed: statement-level triggers queue the rows whose text changed, in the
-- writing transaction (a rollback queues nothing), at most one item per row (a newer change replaces the pending
-- one), each with the fingerprint of the text it was queued for. An INSERT or COPY queues its rows as one array of
-- keys (async_inserted), which the worker turns into items before it claims: a bulk load pays for one array, not
-- for an item and an index entry per row. The database's worker claims a batch in a short
-- transaction, embeds it through the model server holding no transaction, and writes the vectors back in a second
-- short transaction that applies a vector only where the row's text still has the fingerprint the worker embedded.
-- Items that fail alone carry attempts, last error and next retry time, and are parked as failed after
-- qwen_embed.async_max_attempts attempts. The worker's side is in the functions prefixed _async_ (called only by it).

-- Identity of a text: what an item was queued for and what a stored vector was computed from. The one definition.
-- A 64-bit hash (PostgreSQL's own, stable across versions: hash partitioning depends on it), not md5: it runs on the
-- writer's path for every row, and md5 made a 100,000-row COPY 25 % slower. Two texts collide with probability 2^-64.
-- (Classic SQL function bodies throughout: PostgreSQL 13 has no BEGIN ATOMIC.)
CREATE FUNCTION qwen_embed.fingerprint(body text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT pg_catalog.hashtextextended(body, 0) $$;

-- One row per (table, vector column) under create_embedding_triggers, in either mode: its configuration and its
-- counters. mode 'async': the capture triggers are in place; 'sync': the statement embeds (or switched back: the
-- worker finishes what was queued). Every use finds the columns by attribute number (_async_columns), so renaming a
-- column (or the table) changes nothing. The names beside the numbers are what pg_dump saves: a restore numbers a
-- table's columns anew (dropped ones leave no gap), and each row loaded takes its numbers from its names
-- (_async_numbers); an event trigger keeps the names current when columns are renamed (_async_follow_renames). A
-- column the triggers use cannot be dropped or retyped (their WHEN clause depends on it); a key column can, and then
-- that table's work fails with the reason in async_status, alone.
CREATE TABLE qwen_embed.async_tables (
    id               serial PRIMARY KEY,
    relation         regclass    NOT NULL,
    text_column      name        NOT NULL,
    vector_column    name        NOT NULL,
    key_columns      name[]      NOT NULL, -- the primary key's columns, in its order (one or several)
    text_attnum      smallint    NOT NULL,
    vector_attnum    smallint    NOT NULL,
    key_attnums      smallint[]  NOT NULL,
    instruct         text,
    mode             text        NOT NULL CHECK (mode IN ('async', 'sync')),
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    embedded         bigint      NOT NULL DEFAULT 0,
    rows_per_s       float8,
    last_embedded_at timestamptz,
    last_error       text,
    last_error_at    timestamptz,
    UNIQUE (relation, vector_attnum)
);
SELECT pg_catalog.pg_extension_config_dump('qwen_embed.async_tables', '');
-- The triggers name registrations by id: a restored database must not hand out a restored id again.
SELECT pg_catalog.pg_extension_config_dump('qwen_embed.async_tables_id_seq', '');

-- A registration's attribute numbers from its names, as each row is stored (a registration, a restore's COPY).
CREATE FUNCTION qwen_embed._async_numbers() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    number_of text := 'SELECT c.attnum FROM pg_attribute c WHERE c.attrelid = $1 AND c.attname = $2 AND NOT c.attisdropped';
BEGIN
    EXECUTE number_of INTO NEW.text_attnum USING NEW.relation, NEW.text_column;
    EXECUTE number_of INTO NEW.vector_attnum USING NEW.relation, NEW.vector_column;
    NEW.key_attnums := ARRAY(SELECT c.attnum FROM unnest(NEW.key_columns) WITH ORDINALITY k(name, i)
                               JOIN pg_attribute c ON c.attrelid = NEW.relation AND c.attname = k.name AND NOT c.attisdropped
                              ORDER BY k.i);
    RETURN NEW;
END
$$;
CREATE TRIGGER async_numbers BEFORE INSERT ON qwen_embed.async_tables
    FOR EACH ROW EXECUTE FUNCTION qwen_embed._async_numbers();

-- After an ALTER TABLE: the names of the altered tables' registrations, from their numbers (a rename changed them).
-- Never fails the DDL that fired it: a column dropped keeps its last name.
CREATE FUNCTION qwen_embed._async_follow_renames() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name_of text := 'SELECT c.attname FROM pg_attribute c WHERE c.attrelid = $1 AND c.attnum = $2 AND NOT c.attisdropped';
    a qwen_embed.async_tables;
    new_text name;
    new_vector name;
BEGIN
    FOR a IN SELECT * FROM qwen_embed.async_tables t
              WHERE t.relation IN (SELECT d.objid FROM pg_event_trigger_ddl_commands() d
                                    WHERE d.classid = 'pg_class'::regclass) LOOP
        EXECUTE name_of INTO new_text USING a.relation, a.text_attnum;
        EXECUTE name_of INTO new_vector USING a.relation, a.vector_attnum;
        UPDATE qwen_embed.async_tables t
           SET text_column = coalesce(new_text, t.text_column), vector_column = coalesce(new_vector, t.vector_column),
               key_columns = ARRAY(SELECT coalesce(c.attname, t.key_columns[k.i])
                                     FROM unnest(t.key_attnums) WITH ORDINALITY k(attnum, i)
                                     LEFT JOIN pg_attribute c ON c.attrelid = t.relation AND c.attnum = k.attnum
                                                             AND NOT c.attisdropped
                                    ORDER BY k.i)
         WHERE t.id = a.id;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'qwen_embed: could not record the new column names of an embedding registration: %', SQLERRM;
END
$$;
CREATE EVENT TRIGGER qwen_embed_follow_renames ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION qwen_embed._async_follow_renames();

-- Pending work: one item per row at most. key is the row's primary key as text (_async_key_text: a one-column key's
-- text, a text[] literal of a composite key's columns).
CREATE TABLE qwen_embed.async_queue (
    table_id    integer     NOT NULL,
    key         text        NOT NULL,
    fingerprint bigint      NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    next_try    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts    integer     NOT NULL DEFAULT 0,
    leased_at   timestamptz,
    failed      boolean     NOT NULL DEFAULT false,
    last_error  text,
    PRIMARY KEY (table_id, key)
);
-- No index but the key: every index is paid for by each queued row on the writer's path; the worker sorts a
-- table's due items by age when it claims (a fraction of a batch's model time).
-- A queue churns: vacuum it early.
ALTER TABLE qwen_embed.async_queue SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

-- Rows inserted by a statement, not yet items: one row per INSERT or COPY statement, the keys of its rows. The
-- worker turns those with a text and no vector into items, with the fingerprints of their texts then.
CREATE TABLE qwen_embed.async_inserted (
    table_id   integer     NOT NULL,
    keys       text[]      NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- When turning them into items failed (the table's fault: a key column dropped, say), as for items.
    next_try   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts   integer     NOT NULL DEFAULT 0,
    failed     boolean     NOT NULL DEFAULT false,
    last_error text
);
-- Not compressed: a 100,000-row COPY's keys took 6 % of its time to compress, for a row that lives seconds.
ALTER TABLE qwen_embed.async_inserted ALTER COLUMN keys SET STORAGE EXTERNAL;

-- The fingerprint of the text each stored vector was computed from (rows the worker embedded), for repair.
CREATE TABLE qwen_embed.async_embedded (
    table_id    integer NOT NULL,
    key         text    NOT NULL,
    fingerprint bigint  NOT NULL,
    PRIMARY KEY (table_id, key)
);
REVOKE ALL ON qwen_embed.async_tables, qwen_embed.async_queue, qwen_embed.async_inserted, qwen_embed.async_embedded
    FROM PUBLIC;

-- A registration's columns under their names now, and the key columns' types: the one place where the attribute
-- numbers of async_tables become names. An ERROR (42703) names a column that is gone. SECURITY DEFINER: the sync
-- triggers call it as the writing role, which has no rights on async_tables; it tells only column names.
CREATE FUNCTION qwen_embed._async_columns(
    id integer, OUT relation regclass, OUT text_column name, OUT vector_column name, OUT vector_type text,
    OUT key_columns name[], OUT key_types text[], OUT instruct text, OUT mode text
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a qwen_embed.async_tables;
BEGIN
    SELECT * INTO a FROM qwen_embed.async_tables t WHERE t.id = _async_columns.id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qwen_embed: embedding triggers name registration %, which does not exist', id
            USING ERRCODE = 'undefined_object',
                  HINT = 'Drop the table''s qwen_embed triggers and create them again with '
                         'qwen_embed.create_embedding_triggers().';
    END IF;
    relation := a.relation;
    instruct := a.instruct;
    mode := a.mode;
    SELECT c.attname, format_type(c.atttypid, c.atttypmod) INTO vector_column, vector_type
      FROM pg_attribute c WHERE c.attrelid = a.relation AND c.attnum = a.vector_attnum AND NOT c.attisdropped;
    SELECT c.attname INTO text_column
      FROM pg_attribute c WHERE c.attrelid = a.relation AND c.attnum = a.text_attnum AND NOT c.attisdropped;
    SELECT array_agg(c.attname ORDER BY k.i), array_agg(format_type(c.atttypid, NULL) ORDER BY k.i)
      INTO key_columns, key_types
      FROM unnest(a.key_attnums) WITH ORDINALITY k(attnum, i)
      JOIN pg_attribute c ON c.attrelid = a.relation AND c.attnum = k.attnum AND NOT c.attisdropped;
    IF text_column IS NULL OR vector_column IS NULL OR coalesce(cardinality(key_columns), 0) <> cardinality(a.key_attnums) THEN
        RAISE EXCEPTION 'qwen_embed: a column that embedding of %.% uses was dropped', a.relation,
            coalesce(quote_ident(vector_column), 'column ' || a.vector_attnum)
            USING ERRCODE = 'undefined_column',
                  DETAIL = format('text column %s, vector column %s, key columns %s (attribute numbers %s, %s, %s)',
                                  coalesce(quote_ident(text_column), 'dropped'),
                                  coalesce(quote_ident(vector_column), 'dropped'),
                                  coalesce(array_to_string(key_columns, ', '), 'dropped'),
                                  a.text_attnum, a.vector_attnum, a.key_attnums),
                  HINT = 'Give the table a primary key again and create its triggers again with '
                         'qwen_embed.set_embedding_mode() or qwen_embed.create_embedding_triggers().';
    END IF;
    RETURN;
END
$$;

-- The text form of the key of row `alias`, as async_queue.key holds it: a one-column key's text (what 0.2.0 has
-- always stored), or a text[] literal of a composite key's columns, in the key's order.
CREATE FUNCTION qwen_embed._async_key_text(key_columns name[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN cardinality(key_columns) = 1 THEN format('%s.%I::text', alias, key_columns[1])
                ELSE format('ARRAY[%s]::text', (SELECT string_agg(format('%s.%I::text', alias, c), ', ' ORDER BY i)
                                                 FROM unnest(key_columns) WITH ORDINALITY k(c, i))) END
$$;

-- The condition that row `alias` has the key whose text form (_async_key_text) is the expression `key_text`: each
-- key column compared in its own type, so the table's primary key index serves it.
CREATE FUNCTION qwen_embed._async_key_match(key_columns name[], key_types text[], alias text, key_text text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN cardinality(key_columns) = 1
                THEN format('%s.%I = (%s)::%s', alias, key_columns[1], key_text, key_types[1])
                ELSE (SELECT string_agg(format('%s.%I = ((%s)::text[])[%s]::%s', alias, c, key_text, i, key_types[i]),
                                        ' AND ' ORDER BY i)
                        FROM unnest(key_columns) WITH ORDINALITY k(c, i)) END
$$;
