-- qwen_embed 0.1.0 -> 0.2.0: asynchronous embedding. Made by tools/upgrade-0.1.0-0.2.0.sh; do not edit.
\echo Use "ALTER EXTENSION qwen_embed UPDATE TO '0.2.0'" to load this file. \quit

DROP FUNCTION qwen_embed.create_embedding_triggers(regclass, name, name, text);

-- src/async_embed/mod.rs:44
-- qwen_embed::async_embed::_async_wake
CREATE  FUNCTION qwen_embed."_async_wake"(
	"at_commit" bool /* bool */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'async_wake_wrapper';

-- src/async_embed/mod.rs:74
-- qwen_embed::async_embed::_async_worker_pid
CREATE  FUNCTION qwen_embed."_async_worker_pid"() RETURNS INT /* Option < i32 > */
STRICT STABLE PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'async_worker_pid_wrapper';

-- Asynchronous embedding: writes queue work, a background worker per database embeds it (src/async_embed/).
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

-- The capture trigger, for INSERT, UPDATE, DELETE (statement level, with transition tables) and TRUNCATE.
-- TG_ARGV[0]: the async_tables id. SECURITY DEFINER: writers need no rights on the queue.
CREATE FUNCTION qwen_embed._async_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    registration integer := TG_ARGV[0]::integer;
    c record;
    new_key text;
    queue_them text := $q$
        INSERT INTO qwen_embed.async_queue AS q (table_id, key, fingerprint)
        SELECT $1, %1$s, qwen_embed.fingerprint(n.%2$I::text) FROM qwen_embed_new n %4$s
         WHERE n.%2$I IS NOT NULL AND n.%3$I IS NULL %5$s
        ON CONFLICT (table_id, key) DO UPDATE
           SET fingerprint = excluded.fingerprint, queued_at = excluded.queued_at, next_try = excluded.next_try,
               attempts = 0, leased_at = NULL, failed = false, last_error = NULL
         WHERE q.fingerprint <> excluded.fingerprint$q$;
    queued bigint;
BEGIN
    c := qwen_embed._async_columns(registration);
    new_key := qwen_embed._async_key_text(c.key_columns, 'n');
    IF TG_OP = 'INSERT' THEN
        -- The new rows' keys. Which of them have a text and no vector (a vector given by the INSERT is kept, as in
        -- sync mode) the worker sees when it makes them items: reading only the key here is cheaper for the writer.
        EXECUTE format('INSERT INTO qwen_embed.async_inserted (table_id, keys) '
                       'SELECT $1, array_agg(%s) FROM qwen_embed_new n HAVING count(*) > 0', new_key) USING registration;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Only rows whose text changed (their vector was cleared by qwen_embed_clear_on_change). A row whose key
        -- changed counts as new; its old key's item finds no row and is dropped by the worker.
        EXECUTE format(queue_them, new_key, c.text_column, c.vector_column,
                       format('LEFT JOIN qwen_embed_old o ON %s', (
                              SELECT string_agg(format('o.%1$I = n.%1$I', k), ' AND ') FROM unnest(c.key_columns) k)),
                       format('AND (o.%1$I IS NULL OR o.%2$I IS DISTINCT FROM n.%2$I)', c.key_columns[1], c.text_column))
            USING registration;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('DELETE FROM qwen_embed.async_queue q USING qwen_embed_old o '
                       'WHERE q.table_id = $1 AND q.key = %s', qwen_embed._async_key_text(c.key_columns, 'o')) USING registration;
        EXECUTE format('DELETE FROM qwen_embed.async_embedded e USING qwen_embed_old o '
                       'WHERE e.table_id = $1 AND e.key = %s', qwen_embed._async_key_text(c.key_columns, 'o')) USING registration;
        -- Inserted rows not yet items (EXCEPT: a hash anti-join, whatever the sizes of the two sets).
        IF EXISTS (SELECT FROM qwen_embed.async_inserted i WHERE i.table_id = registration) THEN
            EXECUTE format('UPDATE qwen_embed.async_inserted i '
                           'SET keys = ARRAY(SELECT unnest(i.keys) EXCEPT SELECT %s FROM qwen_embed_old o) '
                           'WHERE i.table_id = $1', qwen_embed._async_key_text(c.key_columns, 'o')) USING registration;
            DELETE FROM qwen_embed.async_inserted i WHERE i.table_id = registration AND i.keys = '{}';
        END IF;
        RETURN NULL;
    ELSE -- TRUNCATE
        DELETE FROM qwen_embed.async_inserted i WHERE i.table_id = registration;
        DELETE FROM qwen_embed.async_queue q WHERE q.table_id = registration;
        DELETE FROM qwen_embed.async_embedded e WHERE e.table_id = registration;
        RETURN NULL;
    END IF;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM qwen_embed._async_wake(true); -- the worker is woken when this transaction commits
    END IF;
    RETURN NULL;
END
$$;

-- Worker: gives leases back. Every lease, at the worker's start (a lease is only ever held by this database's one
-- worker, so any lease found then belongs to a worker that died); the leases of some tables after a batch-level
-- failure (the model server down: no item is charged, the error is recorded on the tables), and after each table's
-- write-back or charged failures (what was not finished, because a writer requeued it meanwhile, goes back).
CREATE FUNCTION qwen_embed._async_release(table_ids integer[], error text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE qwen_embed.async_queue SET leased_at = NULL
     WHERE leased_at IS NOT NULL AND (table_ids IS NULL OR table_id = ANY (table_ids));
    IF error IS NOT NULL THEN
        UPDATE qwen_embed.async_tables SET last_error = error, last_error_at = clock_timestamp()
         WHERE id = ANY (table_ids);
    END IF;
END
$$;

-- Worker: gives the leases of items back for a retry after `delay`, uncharged: a write-back that waited its limit
-- for a row a writer holds. Items changed meanwhile were requeued by their writer and are not touched.
CREATE FUNCTION qwen_embed._async_requeue(table_id integer, keys text[], claimed bigint[], delay interval)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE qwen_embed.async_queue q SET leased_at = NULL, next_try = clock_timestamp() + delay
      FROM unnest(keys, claimed) r(key, fp)
     WHERE q.table_id = _async_requeue.table_id AND q.key = r.key AND q.fingerprint = r.fp
$$;

-- Worker: when the next item is due (NULL: nothing left to do but failed items).
CREATE FUNCTION qwen_embed._async_next_due() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT least((SELECT min(next_try) FROM qwen_embed.async_queue WHERE NOT failed AND leased_at IS NULL),
                 (SELECT min(next_try) FROM qwen_embed.async_inserted WHERE NOT failed))
$$;

-- The retry rule of items and inserted rows that failed: the time of the next try after `attempts` failures
-- (10 s · 2^(attempts - 1), at most an hour); parked as failed at max_attempts.
CREATE FUNCTION qwen_embed._async_retry_at(attempts integer) RETURNS timestamptz
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT clock_timestamp() + least(interval '1 hour', interval '10 seconds' * 2 ^ (attempts - 1)) $$;

-- Worker: records an error of a table's own (its rows could not be read or written: a dropped key column, a
-- constraint, a trigger of the user's that raised) on the table, for async_status and wait_for_embeddings.
CREATE FUNCTION qwen_embed._async_table_error(table_id integer, error text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE qwen_embed.async_tables a SET last_error = error, last_error_at = clock_timestamp()
     WHERE a.id = _async_table_error.table_id
$$;

-- Worker: turns the inserted rows of INSERT and COPY statements into items, oldest statements first, until at least
-- `max_keys` keys are done: one item per row that still exists with a text and no vector, with its text's
-- fingerprint and the statement's time. A row that already has an item (changed since) keeps it. A statement whose
-- rows cannot be read (its table's fault) fails alone: it is retried later and parked after max_attempts, as items.
CREATE FUNCTION qwen_embed._async_expand(max_keys integer, max_attempts integer) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b record;
    c record;
    done bigint := 0;
BEGIN
    FOR b IN SELECT i.ctid AS row_id, i.table_id, i.keys, i.queued_at, i.attempts FROM qwen_embed.async_inserted i
              WHERE NOT i.failed AND i.next_try <= now()
              ORDER BY i.queued_at FOR UPDATE SKIP LOCKED LOOP
        EXIT WHEN done >= max_keys;
        BEGIN
            IF EXISTS (SELECT FROM qwen_embed.async_tables a WHERE a.id = b.table_id) THEN
                c := qwen_embed._async_columns(b.table_id);
                EXECUTE format(
                    'INSERT INTO qwen_embed.async_queue (table_id, key, fingerprint, queued_at) '
                    'SELECT $1, r.key, qwen_embed.fingerprint(s.%1$I::text), $3 '
                    'FROM unnest($2) r(key) JOIN %3$s s ON %4$s WHERE s.%1$I IS NOT NULL AND s.%2$I IS NULL '
                    'ON CONFLICT (table_id, key) DO NOTHING',
                    c.text_column, c.vector_column, c.relation,
                    qwen_embed._async_key_match(c.key_columns, c.key_types, 's', 'r.key'))
                    USING b.table_id, b.keys, b.queued_at;
            END IF;
            DELETE FROM qwen_embed.async_inserted i WHERE i.ctid = b.row_id;
        EXCEPTION WHEN query_canceled THEN
            RAISE;
        WHEN lock_not_available OR deadlock_detected THEN
            CONTINUE; -- the table is locked: its rows wait for the next claim, the others go on
        WHEN OTHERS THEN
            UPDATE qwen_embed.async_inserted i
               SET attempts = i.attempts + 1, last_error = SQLERRM, failed = i.attempts + 1 >= max_attempts,
                   next_try = qwen_embed._async_retry_at(i.attempts + 1)
             WHERE i.ctid = b.row_id;
            PERFORM qwen_embed._async_table_error(b.table_id, SQLERRM);
        END;
        done := done + cardinality(b.keys);
    END LOOP;
    RETURN done;
END
$$;

-- Worker: claims up to `batch` due items, taken from the tables in turn (each table's oldest first), leases them,
-- and returns them with their rows' current texts and those texts' fingerprints. Items whose row is gone or has no
-- text any more are finished here. A table whose rows cannot be read (its own fault) has its claimed items charged
-- (_async_fail) and the others go on. The worker waits at most 200 ms for any lock, so that it never holds a lock a
-- writer waits for long, and never takes part in a deadlock (the deadlock detector would otherwise pick a victim,
-- maybe the writer): a table it cannot lock (a TRUNCATE, an ALTER TABLE) keeps its items for the next claim while
-- the others go on; a queue it cannot lock means nothing is claimed this time.
CREATE FUNCTION qwen_embed._async_claim(batch integer, max_attempts integer)
RETURNS TABLE (table_id integer, key text, fingerprint bigint, body_fingerprint bigint, body text, instruct text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    t_id integer;
    c record;
    ids integer[];
    keys text[];
    fps bigint[];
    table_keys text[];
    table_fps bigint[];
    found_keys text[];
    found_fps bigint[];
    found_body_fps bigint[];
    found_bodies text[];
    -- What is returned, gathered first: rows returned inside the block below would stay returned if it failed.
    out_ids integer[] := '{}';
    out_keys text[] := '{}';
    out_fps bigint[] := '{}';
    out_body_fps bigint[] := '{}';
    out_bodies text[] := '{}';
    out_instructs text[] := '{}';
BEGIN
    BEGIN
        PERFORM set_config('lock_timeout', '200ms', true);
        -- Tables dropped since they were configured: their items have nothing to do.
        WITH gone AS (
            DELETE FROM qwen_embed.async_tables a WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = a.relation)
            RETURNING a.id
        ), q AS (DELETE FROM qwen_embed.async_queue q USING gone WHERE q.table_id = gone.id)
        , i AS (DELETE FROM qwen_embed.async_inserted i USING gone WHERE i.table_id = gone.id)
        DELETE FROM qwen_embed.async_embedded e USING gone WHERE e.table_id = gone.id;
        PERFORM qwen_embed._async_expand(greatest(batch * 8, 1024), max_attempts);
        WITH due AS (
            SELECT d.table_id, d.key, d.fingerprint,
                   row_number() OVER (PARTITION BY d.table_id ORDER BY d.queued_at) AS turn
              FROM qwen_embed.async_tables a
             CROSS JOIN LATERAL (
                   SELECT q.table_id, q.key, q.fingerprint, q.queued_at FROM qwen_embed.async_queue q
                    WHERE q.table_id = a.id AND NOT q.failed AND q.leased_at IS NULL AND q.next_try <= now()
                    ORDER BY q.queued_at LIMIT batch
                      FOR UPDATE SKIP LOCKED) d
        ), taken AS (
            SELECT due.table_id, due.key, due.fingerprint FROM due ORDER BY turn, table_id LIMIT batch
        ), leased AS (
            UPDATE qwen_embed.async_queue q SET leased_at = now() FROM taken
             WHERE q.table_id = taken.table_id AND q.key = taken.key
            RETURNING q.table_id, q.key, q.fingerprint
        )
        SELECT array_agg(l.table_id), array_agg(l.key), array_agg(l.fingerprint) INTO ids, keys, fps FROM leased l;
        FOR t_id IN SELECT DISTINCT u.i FROM unnest(ids) u(i) ORDER BY 1 LOOP
            SELECT array_agg(u.k), array_agg(u.f) INTO table_keys, table_fps
              FROM unnest(ids, keys, fps) u(i, k, f) WHERE u.i = t_id;
            BEGIN
                c := qwen_embed._async_columns(t_id);
                EXECUTE format(
                    'SELECT coalesce(array_agg(r.key), ''{}''), coalesce(array_agg(r.fp), ''{}''), '
                    '       coalesce(array_agg(qwen_embed.fingerprint(s.%1$I::text)), ''{}''), '
                    '       coalesce(array_agg(s.%1$I::text), ''{}'') '
                    'FROM unnest($1, $2) r(key, fp) JOIN %2$s s ON %3$s WHERE s.%1$I IS NOT NULL',
                    c.text_column, c.relation, qwen_embed._async_key_match(c.key_columns, c.key_types, 's', 'r.key'))
                    INTO found_keys, found_fps, found_body_fps, found_bodies
                    USING table_keys, table_fps;
                -- Rows deleted (with the triggers bypassed) or left without text: nothing to embed.
                EXECUTE format(
                    'DELETE FROM qwen_embed.async_queue q USING unnest($2, $3) r(key, fp) '
                    'WHERE q.table_id = $1 AND q.key = r.key AND q.fingerprint = r.fp AND NOT EXISTS ('
                    '  SELECT FROM %2$s s WHERE %3$s AND s.%1$I IS NOT NULL)',
                    c.text_column, c.relation, qwen_embed._async_key_match(c.key_columns, c.key_types, 's', 'r.key'))
                    USING t_id, table_keys, table_fps;
            EXCEPTION WHEN query_canceled THEN
                RAISE;
            WHEN lock_not_available OR deadlock_detected THEN
                -- The table is locked (a TRUNCATE, an ALTER TABLE): its items wait, uncharged; the others go on.
                UPDATE qwen_embed.async_queue q SET leased_at = NULL
                 WHERE q.table_id = t_id AND q.key = ANY (table_keys);
                CONTINUE;
            WHEN OTHERS THEN
                -- This table's fault, charged to its items alone; the other tables' items go on.
                PERFORM qwen_embed._async_fail(t_id, table_keys, table_fps, SQLERRM, max_attempts);
                CONTINUE;
            END;
            out_keys := out_keys || found_keys;
            out_fps := out_fps || found_fps;
            out_body_fps := out_body_fps || found_body_fps;
            out_bodies := out_bodies || found_bodies;
            out_instructs := out_instructs || array_fill(c.instruct, ARRAY[cardinality(found_keys)]);
            out_ids := out_ids || array_fill(t_id, ARRAY[cardinality(found_keys)]);
        END LOOP;
        PERFORM set_config('lock_timeout', '0', true);
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        RETURN; -- nothing claimed: the block's leases are undone
    END;
    RETURN QUERY SELECT * FROM unnest(out_ids, out_keys, out_fps, out_body_fps, out_bodies, out_instructs);
END
$$;

-- Worker: writes the vectors of one table's items. A vector is applied only where the row still exists and its text
-- still has the fingerprint of the text the worker embedded (`embedded`); an item is finished if it still has the
-- fingerprint it was claimed with (a newer change has replaced it otherwise, and stays queued). Waits at most
-- `lock_wait` for any lock (a row a writer holds, a TRUNCATE): then nothing is written and `written` is -1, for the
-- worker to give the items back (uncharged, _async_requeue) in a transaction of its own. So the worker never holds
-- a lock a writer waits for long and never takes part in a deadlock. Any other error (the table's: a constraint, a
-- trigger of the user's that raised, a dropped key column) writes nothing and is returned as `error`, for the
-- worker to find the rows at fault by halves and charge them alone. `seconds`: the time the batch took (for the
-- rows-per-second moving average of the status view).
CREATE FUNCTION qwen_embed._async_apply(
    table_id integer, keys text[], claimed bigint[], embedded bigint[], vectors text[], lock_wait interval, seconds float8,
    OUT written integer, OUT error text
)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    c record;
    written_keys text[];
    written_fps bigint[];
BEGIN
    BEGIN
        PERFORM set_config('lock_timeout', (extract(epoch FROM lock_wait) * 1000)::bigint::text, true);
        c := qwen_embed._async_columns(_async_apply.table_id);
        EXECUTE format(
            'WITH r AS (SELECT * FROM unnest($1, $2, $3) r(key, fp, v)), '
            'w AS (UPDATE %2$s s SET %3$I = r.v::%4$s FROM r '
            '       WHERE %5$s AND qwen_embed.fingerprint(s.%1$I::text) = r.fp '
            '      RETURNING r.key, r.fp) '
            'SELECT array_agg(key), array_agg(fp) FROM w',
            c.text_column, c.relation, c.vector_column, c.vector_type,
            qwen_embed._async_key_match(c.key_columns, c.key_types, 's', 'r.key'))
            INTO written_keys, written_fps USING keys, embedded, vectors;
        INSERT INTO qwen_embed.async_embedded AS e (table_id, key, fingerprint)
        SELECT _async_apply.table_id, k, f FROM unnest(written_keys, written_fps) w(k, f)
        ON CONFLICT (table_id, key) DO UPDATE SET fingerprint = excluded.fingerprint;
        DELETE FROM qwen_embed.async_queue q USING unnest(keys, claimed) r(key, fp)
         WHERE q.table_id = _async_apply.table_id AND q.key = r.key AND q.fingerprint = r.fp;
        -- The rest (items requeued meanwhile) goes back to the queue.
        PERFORM qwen_embed._async_release(ARRAY[_async_apply.table_id], NULL);
        written := coalesce(cardinality(written_keys), 0);
        UPDATE qwen_embed.async_tables a
           SET embedded = a.embedded + written, last_embedded_at = clock_timestamp(),
               rows_per_s = 0.7 * coalesce(a.rows_per_s, written / greatest(seconds, 1e-3))
                            + 0.3 * written / greatest(seconds, 1e-3)
         WHERE a.id = _async_apply.table_id;
        PERFORM set_config('lock_timeout', '0', true);
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        written := -1;
    WHEN query_canceled THEN
        RAISE;
    WHEN OTHERS THEN
        written := 0;
        error := SQLERRM;
    END;
END
$$;

-- Worker: charges items that failed by themselves (each alone in its request, or alone in a write-back, or all of a
-- table whose rows could not be read): attempts + 1, the error, a retry at _async_retry_at, parked as failed after
-- max_attempts.
CREATE FUNCTION qwen_embed._async_fail(table_id integer, keys text[], claimed bigint[], error text, max_attempts integer)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    UPDATE qwen_embed.async_queue q
       SET attempts = q.attempts + 1, last_error = error, leased_at = NULL, failed = q.attempts + 1 >= max_attempts,
           next_try = qwen_embed._async_retry_at(q.attempts + 1)
      FROM unnest(keys, claimed) r(key, fp)
     WHERE q.table_id = _async_fail.table_id AND q.key = r.key AND q.fingerprint = r.fp;
    -- Items changed meanwhile were requeued by their writer: they only go back to the queue. The error is the table's.
    PERFORM qwen_embed._async_release(ARRAY[_async_fail.table_id], error);
END
$$;

-- Pending: items waiting, and inserted rows not yet items (until then, a row changed meanwhile may count twice, and
-- one inserted with its vector or without a text counts once). Retrying: of those, the ones that failed at least
-- once and wait for their next try (last_error says why). The columns under their names now.
CREATE VIEW qwen_embed.async_status AS
SELECT a.relation, tc.attname AS text_column, vc.attname AS vector_column, a.mode,
       q.pending + coalesce(i.pending, 0) AS pending, q.in_progress, q.failed + coalesce(i.failed, 0) AS failed,
       q.retrying + coalesce(i.retrying, 0) AS retrying,
       now() - least(q.oldest, i.oldest) AS lag,
       round(a.rows_per_s::numeric, 1) AS rows_per_s,
       a.embedded, a.last_embedded_at, a.last_error, a.last_error_at,
       qwen_embed._async_worker_pid() AS worker_pid
  FROM qwen_embed.async_tables a
  LEFT JOIN pg_catalog.pg_attribute tc ON tc.attrelid = a.relation AND tc.attnum = a.text_attnum
  LEFT JOIN pg_catalog.pg_attribute vc ON vc.attrelid = a.relation AND vc.attnum = a.vector_attnum
 CROSS JOIN LATERAL (
       SELECT count(*) FILTER (WHERE NOT q.failed AND q.leased_at IS NULL) AS pending,
              count(*) FILTER (WHERE q.leased_at IS NOT NULL) AS in_progress,
              count(*) FILTER (WHERE q.failed) AS failed,
              count(*) FILTER (WHERE NOT q.failed AND q.attempts > 0) AS retrying,
              min(q.queued_at) FILTER (WHERE NOT q.failed) AS oldest
         FROM qwen_embed.async_queue q WHERE q.table_id = a.id) q
 CROSS JOIN LATERAL (
       SELECT sum(cardinality(i.keys)) FILTER (WHERE NOT i.failed) AS pending,
              sum(cardinality(i.keys)) FILTER (WHERE i.failed) AS failed,
              sum(cardinality(i.keys)) FILTER (WHERE NOT i.failed AND i.attempts > 0) AS retrying,
              min(i.queued_at) FILTER (WHERE NOT i.failed) AS oldest
         FROM qwen_embed.async_inserted i WHERE i.table_id = a.id) i;
GRANT SELECT ON qwen_embed.async_status TO PUBLIC;

-- Parked items, and parked rows of INSERT statements whose rows could not be read (key: each row's key).
CREATE VIEW qwen_embed.async_failed AS
SELECT a.relation, vc.attname AS vector_column, f.key, f.attempts, f.last_error, f.queued_at
  FROM (SELECT q.table_id, q.key, q.attempts, q.last_error, q.queued_at FROM qwen_embed.async_queue q WHERE q.failed
        UNION ALL
        SELECT i.table_id, k.key, i.attempts, i.last_error, i.queued_at
          FROM qwen_embed.async_inserted i CROSS JOIN LATERAL unnest(i.keys) k(key) WHERE i.failed) f
  JOIN qwen_embed.async_tables a ON a.id = f.table_id
  LEFT JOIN pg_catalog.pg_attribute vc ON vc.attrelid = a.relation AND vc.attnum = a.vector_attnum;

-- The async_tables row of a table's vector column (the only one, when vector_column is NULL); an ERROR if none.
CREATE FUNCTION qwen_embed._async_table(tbl regclass, vector_column name) RETURNS qwen_embed.async_tables
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    found qwen_embed.async_tables;
    n integer;
BEGIN
    SELECT count(*) INTO n FROM qwen_embed.async_tables a
     WHERE a.relation = tbl AND (_async_table.vector_column IS NULL OR a.vector_attnum = (
           SELECT c.attnum FROM pg_attribute c
            WHERE c.attrelid = tbl AND c.attname = _async_table.vector_column AND NOT c.attisdropped));
    IF n <> 1 THEN
        RAISE EXCEPTION 'qwen_embed: % has % async embedding columns%', tbl, n,
            coalesce(' named ' || quote_literal(_async_table.vector_column), '')
            USING ERRCODE = 'undefined_object',
                  HINT = CASE WHEN n = 0 THEN 'Create them with qwen_embed.create_embedding_triggers(..., mode => ''async'').'
                              ELSE 'Name the vector column.' END;
    END IF;
    SELECT * INTO found FROM qwen_embed.async_tables a
     WHERE a.relation = tbl AND (_async_table.vector_column IS NULL OR a.vector_attnum = (
           SELECT c.attnum FROM pg_attribute c
            WHERE c.attrelid = tbl AND c.attname = _async_table.vector_column AND NOT c.attisdropped));
    RETURN found;
END
$$;

-- Returns when the table has nothing pending or in progress (read-your-writes for scripts and tests); an ERROR
-- (57014) at the timeout, and at once (55000, with the error) while rows that failed wait for a retry. Parked items do
-- not count as pending: a WARNING says how many there are.
-- SECURITY DEFINER: any role may wait (it learns only counts, as from the async_status view).
CREATE FUNCTION qwen_embed.wait_for_embeddings(
    tbl regclass, timeout interval DEFAULT '1 minute', vector_column name DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t qwen_embed.async_tables := qwen_embed._async_table(tbl, vector_column);
    deadline timestamptz := clock_timestamp() + timeout;
    left_over bigint;
    failed bigint;
    retrying bigint;
    error text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'qwen_embed.wait_for_embeddings cannot see the worker''s writes in a % transaction',
            current_setting('transaction_isolation')
            USING ERRCODE = 'active_sql_transaction', HINT = 'Call it outside the transaction, or in READ COMMITTED.';
    END IF;
    PERFORM qwen_embed._async_wake(false);
    LOOP
        -- The status view's counts (one rule for what is pending; a failed item is never leased).
        SELECT s.pending + s.in_progress, s.failed, s.retrying, s.last_error INTO left_over, failed, retrying, error
          FROM qwen_embed.async_status s
         WHERE s.relation = t.relation AND s.vector_column = (
               SELECT c.attname FROM pg_attribute c WHERE c.attrelid = t.relation AND c.attnum = t.vector_attnum);
        EXIT WHEN left_over = 0;
        -- Rows that failed and wait for a retry: waiting would not make them succeed; say why at once.
        IF retrying > 0 THEN
            RAISE EXCEPTION 'qwen_embed: % rows of % failed to embed and wait for a retry: %', retrying, tbl, error
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'See qwen_embed.async_status and qwen_embed.async_failed; once the cause is fixed, '
                             'qwen_embed.retry_failed_embeddings() retries them at once.';
        END IF;
        IF clock_timestamp() >= deadline THEN
            RAISE EXCEPTION 'qwen_embed: % rows of % still wait for their embeddings after %', left_over, tbl, timeout
                USING ERRCODE = 'query_canceled',
                      HINT = 'See qwen_embed.async_status (lag, rows_per_s, last_error) and the server log.';
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
    IF failed > 0 THEN
        RAISE WARNING 'qwen_embed: % rows of % failed to embed and are parked', failed, tbl
            USING HINT = 'See qwen_embed.async_failed; qwen_embed.retry_failed_embeddings() queues them again.';
    END IF;
END
$$;

-- retry, drop and repair run with the caller's rights: the owner of the extension, or roles granted rights on the
-- queue tables.
CREATE FUNCTION qwen_embed.retry_failed_embeddings(tbl regclass, vector_column name DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t qwen_embed.async_tables := qwen_embed._async_table(tbl, vector_column);
    n bigint;
    key_count bigint;
BEGIN
    -- Parked rows, and rows that failed and wait for a retry: due now, with their attempts forgotten.
    UPDATE qwen_embed.async_queue SET failed = false, attempts = 0, next_try = now(), last_error = NULL
     WHERE table_id = t.id AND (failed OR attempts > 0);
    GET DIAGNOSTICS n = ROW_COUNT;
    WITH retried AS (
        UPDATE qwen_embed.async_inserted SET failed = false, attempts = 0, next_try = now(), last_error = NULL
         WHERE table_id = t.id AND (failed OR attempts > 0)
        RETURNING cardinality(keys) AS n
    )
    SELECT coalesce(sum(retried.n), 0) INTO key_count FROM retried;
    n := n + key_count;
    IF n > 0 THEN
        PERFORM qwen_embed._async_wake(true);
    END IF;
    RETURN n;
END
$$;

CREATE FUNCTION qwen_embed.drop_failed_embeddings(tbl regclass, vector_column name DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t qwen_embed.async_tables := qwen_embed._async_table(tbl, vector_column);
    n bigint;
    key_count bigint;
BEGIN
    DELETE FROM qwen_embed.async_queue WHERE table_id = t.id AND failed;
    GET DIAGNOSTICS n = ROW_COUNT;
    WITH dropped AS (
        DELETE FROM qwen_embed.async_inserted WHERE table_id = t.id AND failed RETURNING cardinality(keys) AS n
    )
    SELECT coalesce(sum(dropped.n), 0) INTO key_count FROM dropped;
    RETURN n + key_count;
END
$$;

-- Queues the rows whose vector is NULL (and text is not), and the rows whose text no longer has the fingerprint of
-- the text their vector was computed from: writes that bypassed the triggers (session_replication_role = replica,
-- logical replication, a restore, triggers disabled for a while). Rows whose vector was given explicitly (no
-- fingerprint known) are left alone. Returns the number of rows queued.
CREATE FUNCTION qwen_embed.repair_embeddings(tbl regclass, vector_column name DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t qwen_embed.async_tables := qwen_embed._async_table(tbl, vector_column);
    c record := qwen_embed._async_columns(t.id);
    key text := qwen_embed._async_key_text(c.key_columns, 's');
    n bigint;
BEGIN
    -- Fingerprints of rows that are gone.
    EXECUTE format('DELETE FROM qwen_embed.async_embedded e WHERE e.table_id = $1 AND NOT EXISTS ('
                   '  SELECT FROM %s s WHERE %s)',
                   c.relation, qwen_embed._async_key_match(c.key_columns, c.key_types, 's', 'e.key')) USING t.id;
    EXECUTE format($q$
        INSERT INTO qwen_embed.async_queue AS q (table_id, key, fingerprint)
        SELECT $1, %1$s, qwen_embed.fingerprint(s.%2$I::text) FROM %4$s s
          LEFT JOIN qwen_embed.async_embedded e ON e.table_id = $1 AND e.key = %1$s
         WHERE s.%2$I IS NOT NULL
           AND (s.%3$I IS NULL OR e.fingerprint <> qwen_embed.fingerprint(s.%2$I::text))
        ON CONFLICT (table_id, key) DO UPDATE
           SET fingerprint = excluded.fingerprint, queued_at = excluded.queued_at, next_try = excluded.next_try,
               attempts = 0, leased_at = NULL, failed = false, last_error = NULL
         WHERE q.fingerprint <> excluded.fingerprint$q$,
        key, c.text_column, c.vector_column, c.relation) USING t.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM qwen_embed._async_wake(true);
    END IF;
    RETURN n;
END
$$;

COMMENT ON FUNCTION qwen_embed.wait_for_embeddings(regclass, interval, name) IS
    'Wait until the async embedding queue of a table is empty; ERROR 57014 at the timeout';
COMMENT ON FUNCTION qwen_embed.repair_embeddings(regclass, name) IS
    'Queue the rows of an async table whose vector is NULL or was computed from another text';
COMMENT ON VIEW qwen_embed.async_status IS
    'Per async table: pending, in progress and failed items, lag (age of the oldest pending item), rows/s, last error';

-- Called by create_embedding_triggers: the registration of the table's vector column (made, or updated to this text
-- column, instruction and mode), its id, which the triggers take as their argument. The columns are recorded by
-- attribute number, the key as the primary key's columns now (one or several: a partitioned table's key includes
-- its partition key). SECURITY DEFINER: creating triggers needs only the TRIGGER privilege on the table, checked here.
CREATE FUNCTION qwen_embed._async_register(tbl regclass, text_column name, vector_column name, instruct text, mode text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    key_attnums smallint[];
    id integer;
BEGIN
    IF NOT has_table_privilege(session_user, tbl, 'TRIGGER') THEN
        RAISE EXCEPTION 'permission denied to create triggers on %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT i.indkey::smallint[] INTO key_attnums FROM pg_index i WHERE i.indrelid = tbl AND i.indisprimary;
    IF key_attnums IS NULL THEN
        RAISE EXCEPTION 'qwen_embed: table % has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The vectors are written back by primary key; add one, e.g. id bigint '
                         'GENERATED ALWAYS AS IDENTITY PRIMARY KEY.';
    END IF;
    PERFORM FROM pg_attribute c
     WHERE c.attrelid = tbl AND c.attname = text_column AND c.attnum > 0 AND NOT c.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qwen_embed: column % of % does not exist', quote_literal(text_column), tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    -- The numbers are taken from the names as the row is stored (_async_numbers).
    INSERT INTO qwen_embed.async_tables AS a (relation, text_column, vector_column, key_columns, text_attnum,
                                              vector_attnum, key_attnums, instruct, mode)
    VALUES (tbl, text_column, vector_column,
            ARRAY(SELECT c.attname FROM unnest(key_attnums) WITH ORDINALITY k(attnum, i)
                    JOIN pg_attribute c ON c.attrelid = tbl AND c.attnum = k.attnum ORDER BY k.i),
            0, 0, '{}', instruct, mode)
    ON CONFLICT ON CONSTRAINT async_tables_relation_vector_attnum_key DO UPDATE
       SET text_column = excluded.text_column, text_attnum = excluded.text_attnum, vector_column = excluded.vector_column,
           key_columns = excluded.key_columns, key_attnums = excluded.key_attnums, instruct = excluded.instruct,
           mode = excluded.mode
    RETURNING a.id INTO id;
    RETURN id;
END
$$;

-- Called by set_embedding_mode(..., 'sync') on an async table: the capture triggers are gone; the worker finishes
-- what is queued, and the fingerprints of the vectors it wrote are forgotten (the sync triggers now write vectors
-- without them).
CREATE FUNCTION qwen_embed._async_unregister(registration integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := (SELECT a.relation FROM qwen_embed.async_tables a WHERE a.id = registration);
BEGIN
    IF NOT has_table_privilege(session_user, tbl, 'TRIGGER') THEN
        RAISE EXCEPTION 'permission denied to drop triggers on %', tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE qwen_embed.async_tables a SET mode = 'sync' WHERE a.id = registration;
    DELETE FROM qwen_embed.async_embedded e WHERE e.table_id = registration;
END
$$;

-- qwen_embed.create_embedding_triggers(table, text_column, vector_column [, instruct] [, mode => 'sync' | 'async'])
-- Attaches the triggers that keep vector_column = embed(text_column [, instruct]).
-- mode 'sync' (the default): the writing statement embeds its rows:
-- - AFTER INSERT and AFTER UPDATE, FOR EACH STATEMENT (qwen_embed_trigger): embed the statement's rows that have a
--   text and no vector, in batches. PostgreSQL allows transition tables only on single-event triggers, hence two.
-- - BEFORE UPDATE, FOR EACH ROW, only when the text changes and the statement leaves the vector as it was
--   (qwen_embed_clear_on_change): clears the row's vector. A row trigger sees each row's OLD and NEW exactly, so statements that change the
--   primary key, INSERT … ON CONFLICT DO UPDATE and MERGE are handled like any UPDATE.
-- A vector given explicitly by INSERT or UPDATE is kept.
-- mode 'async': the writing statement only queues its rows (sql/async.sql) and the database's background worker
-- embeds them after the commit: AFTER INSERT, UPDATE, DELETE (statement, transition tables) and TRUNCATE triggers
-- running qwen_embed._async_capture, and the same BEFORE UPDATE row trigger.
CREATE FUNCTION qwen_embed.create_embedding_triggers(
    tbl regclass,
    text_column name,
    vector_column name,
    instruct text DEFAULT NULL,
    mode text DEFAULT 'sync'
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- pgvector's = for the vector column, schema-qualified (this function runs with a fixed search_path); NULL when
    -- the column is not a pgvector vector.
    vector_eq text := (
        SELECT format('OPERATOR(%I.=)', n.nspname)
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid AND t.typname = 'vector'
        JOIN pg_operator o ON o.oprname = '=' AND o.oprleft = a.atttypid AND o.oprright = a.atttypid
        JOIN pg_namespace n ON n.oid = o.oprnamespace
        WHERE a.attrelid = tbl AND a.attname = vector_column AND NOT a.attisdropped);
    prefix text := 'qwen_embed_' || vector_column;
    registration text;
    capture text;
BEGIN
    IF mode IS NULL OR mode NOT IN ('sync', 'async') THEN
        RAISE EXCEPTION 'qwen_embed: mode must be ''sync'' or ''async'', got %', coalesce(quote_literal(mode), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF vector_eq IS NULL THEN
        RAISE EXCEPTION 'qwen_embed: column % of % is not of type vector', quote_literal(vector_column), tbl
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    IF mode = 'async' THEN
        PERFORM qwen_embed._async_wake(false); -- an ERROR with a hint unless qwen_embed is preloaded
    END IF;
    -- The triggers name the registration, which holds the columns by number: renaming a column changes nothing.
    registration := quote_literal(qwen_embed._async_register(tbl, text_column, vector_column, instruct, mode));
    -- Fires when the text changes and the statement leaves the vector as it was (NULL = NULL counts as unchanged;
    -- a NULL on one side only makes the condition NULL, so it does not fire: the statement set or cleared it).
    -- PostgreSQL keeps the WHEN clause as column numbers, so it too follows a rename.
    EXECUTE format(
        'CREATE TRIGGER %I BEFORE UPDATE ON %s FOR EACH ROW '
        'WHEN (OLD.%I IS DISTINCT FROM NEW.%I AND (OLD.%I IS NULL AND NEW.%I IS NULL OR OLD.%I %s NEW.%I)) '
        'EXECUTE FUNCTION @extschema@.qwen_embed_clear_on_change(%s)',
        prefix || '_clear', tbl, text_column, text_column,
        vector_column, vector_column, vector_column, vector_eq, vector_column, registration);
    IF mode = 'async' THEN
        capture := format('EXECUTE FUNCTION qwen_embed._async_capture(%s)', registration);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_embed_new '
                       'FOR EACH STATEMENT %s', prefix || '_async_insert', tbl, capture);
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS qwen_embed_old NEW TABLE AS qwen_embed_new FOR EACH STATEMENT %s',
                       prefix || '_async_update', tbl, capture);
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS qwen_embed_old '
                       'FOR EACH STATEMENT %s', prefix || '_async_delete', tbl, capture);
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT %s',
                       prefix || '_async_truncate', tbl, capture);
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_embed_new '
        'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.qwen_embed_trigger(%s)',
        prefix || '_insert', tbl, registration);
    EXECUTE format(
        'CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING NEW TABLE AS qwen_embed_new '
        'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.qwen_embed_trigger(%s)',
        prefix || '_update', tbl, registration);
END
$$;

COMMENT ON FUNCTION qwen_embed.create_embedding_triggers(regclass, name, name, text, text) IS
    'Create the triggers that embed text_column into vector_column: in the writing statement (sync) or after it (async)';

-- qwen_embed.set_embedding_mode(table, vector_column, mode): switches a table's triggers between 'sync' and 'async',
-- in one transaction (writers wait for it, then find the new triggers), losing no work: rows queued in async mode are
-- still embedded by the worker after a switch to sync. Returns the previous mode. The triggers are found by the
-- registration they name (whatever the columns are called now), or, made by hand or by 0.1.0 with column names, by
-- their names.
CREATE FUNCTION qwen_embed.set_embedding_mode(tbl regclass, vector_column name, mode text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    prefix text := 'qwen_embed_' || vector_column;
    registration integer;
    previous text;
    raw bytea;
    trigger_name name;
    args text[] := '{}';
    text_column name;
    instruct text;
BEGIN
    -- Triggers that name a registration: their one argument is its id.
    SELECT a.id INTO registration FROM qwen_embed.async_tables a
     WHERE a.relation = tbl AND a.vector_attnum = (SELECT c.attnum FROM pg_attribute c
                                                   WHERE c.attrelid = tbl AND c.attname = vector_column AND NOT c.attisdropped)
       AND EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgnargs = 1
                      AND t.tgargs = convert_to(a.id::text, 'UTF8') || '\x00'::bytea);
    IF registration IS NOT NULL THEN
        SELECT c.mode, c.text_column, c.instruct INTO previous, text_column, instruct
          FROM qwen_embed._async_columns(registration) c;
    ELSE
        SELECT CASE WHEN t.tgname = prefix || '_insert' THEN 'sync' ELSE 'async' END, t.tgargs
          INTO previous, raw
          FROM pg_trigger t WHERE t.tgrelid = tbl AND t.tgname IN (prefix || '_insert', prefix || '_async_insert');
        -- The trigger's arguments: NUL-terminated strings.
        WHILE length(raw) > 0 LOOP
            args := args || convert_from(substring(raw FROM 1 FOR position('\x00'::bytea IN raw) - 1),
                                         getdatabaseencoding());
            raw := substring(raw FROM position('\x00'::bytea IN raw) + 1);
        END LOOP;
        text_column := args[1];
        instruct := args[3];
    END IF;
    IF previous IS NULL THEN
        RAISE EXCEPTION 'qwen_embed: % has no embedding triggers for column %', tbl, quote_literal(vector_column)
            USING ERRCODE = 'undefined_object', HINT = 'Create them with qwen_embed.create_embedding_triggers().';
    END IF;
    IF previous = mode THEN
        RETURN previous;
    END IF;
    IF previous = 'async' THEN
        PERFORM qwen_embed._async_unregister(registration);
    END IF;
    FOR trigger_name IN
        SELECT t.tgname FROM pg_trigger t
         WHERE t.tgrelid = tbl AND NOT t.tgisinternal
           AND CASE WHEN registration IS NOT NULL
                    THEN t.tgnargs = 1 AND t.tgargs = convert_to(registration::text, 'UTF8') || '\x00'::bytea
                         AND t.tgfoid IN ('qwen_embed._async_capture()'::regprocedure,
                                          '@extschema@.qwen_embed_trigger()'::regprocedure,
                                          '@extschema@.qwen_embed_clear_on_change()'::regprocedure)
                    ELSE t.tgname IN (prefix || '_clear', prefix || '_insert', prefix || '_update') END
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, tbl);
    END LOOP;
    PERFORM qwen_embed.create_embedding_triggers(tbl, text_column, vector_column, instruct, mode);
    RETURN previous;
END
$$;

ALTER TABLE qwen_embed.backfill_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY may_update_the_column ON qwen_embed.backfill_progress
    USING (pg_catalog.has_column_privilege(relation, vector_column, 'UPDATE'));
GRANT SELECT, INSERT, UPDATE ON qwen_embed.backfill_progress TO PUBLIC;

CREATE OR REPLACE FUNCTION qwen_embed.backfill_report(
    tbl regclass, text_column name, vector_column name, rows_total bigint, rows_done bigint, event text
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF NOT has_column_privilege(backfill_report.tbl, backfill_report.vector_column, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied to update column % of %',
            backfill_report.vector_column, backfill_report.tbl USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO qwen_embed.backfill_progress AS p
    VALUES (backfill_report.tbl, backfill_report.vector_column, backfill_report.text_column, pg_backend_pid(),
            CASE event WHEN 'done' THEN 'done' ELSE 'running' END,
            backfill_report.rows_total, backfill_report.rows_done, clock_timestamp(), clock_timestamp())
    ON CONFLICT (relation, vector_column) DO UPDATE
        SET text_column = excluded.text_column, pid = excluded.pid, state = excluded.state,
            rows_total = excluded.rows_total, rows_done = excluded.rows_done, updated_at = excluded.updated_at,
            started_at = CASE event WHEN 'start' THEN excluded.started_at ELSE p.started_at END;
END
$$;

CREATE OR REPLACE PROCEDURE qwen_embed.backfill(
    tbl regclass,
    text_column name,
    vector_column name,
    instruct text DEFAULT NULL,
    batch integer DEFAULT 64,
    dim integer DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
DECLARE
    pending text := format('%I IS NULL AND %I IS NOT NULL', vector_column, text_column);
    take text := format(
        'SELECT pg_catalog.array_agg(ctid), pg_catalog.array_agg(%I) FROM ('
        '  SELECT ctid, %I FROM %s WHERE ctid OPERATOR(pg_catalog.>) $1 AND %s LIMIT $2 FOR UPDATE SKIP LOCKED) s',
        text_column, text_column, tbl, pending);
    fill text := format(
        'UPDATE %s SET %I = ($2)[pg_catalog.array_position($1, ctid)] '
        'WHERE ctid OPERATOR(pg_catalog.=) ANY ($1) AND %I IS NULL',
        tbl, vector_column, vector_column);
    start_of_table constant tid := '(0,0)';
    after tid := start_of_table;
    ids tid[];
    texts text[];
    filled bigint;
    total bigint;
    done bigint := 0;
    started timestamptz := clock_timestamp();
    last_notice timestamptz := clock_timestamp();
    elapsed float8;
BEGIN
    IF batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'qwen_embed: batch must be at least 1, got %', batch USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM FROM pg_catalog.pg_attribute
     WHERE attrelid = tbl AND attname = vector_column AND NOT attisdropped
       AND (SELECT typname FROM pg_catalog.pg_type WHERE oid = atttypid) = 'vector';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'qwen_embed: % has no column % of type vector', tbl, vector_column
            USING ERRCODE = 'undefined_column';
    END IF;
    EXECUTE format('SELECT pg_catalog.count(*) FROM %s WHERE %s', tbl, pending) INTO total;
    PERFORM qwen_embed.backfill_report(tbl, text_column, vector_column, total, 0, 'start');
    COMMIT;
    LOOP
        EXECUTE take INTO ids, texts USING after, batch;
        IF ids IS NULL THEN
            -- Reached the end. Rows skipped while locked or added behind us: one more sweep from the start.
            EXIT WHEN after = start_of_table;
            after := start_of_table;
            CONTINUE;
        END IF;
        -- Behind interactive and async work in the model server (until this batch's COMMIT).
        PERFORM pg_catalog.set_config('qwen_embed.priority', 'backfill', true);
        EXECUTE fill USING ids, @extschema@.embed(texts, instruct, dim);
        GET DIAGNOSTICS filled = ROW_COUNT;
        done := done + filled;
        SELECT pg_catalog.max(id) INTO after FROM pg_catalog.unnest(ids) AS id;
        PERFORM qwen_embed.backfill_report(tbl, text_column, vector_column, greatest(total, done), done, 'progress');
        COMMIT;
        IF clock_timestamp() - last_notice >= interval '5 seconds' THEN
            elapsed := extract(epoch FROM clock_timestamp() - started);
            RAISE NOTICE 'qwen_embed backfill of %.%: % of % rows, % rows/s, ETA %', tbl, vector_column, done,
                greatest(total, done), round((done / elapsed)::numeric, 1),
                pg_catalog.make_interval(secs => round(greatest(total - done, 0) * elapsed / done));
            last_notice := clock_timestamp();
        END IF;
    END LOOP;
    PERFORM qwen_embed.backfill_report(tbl, text_column, vector_column, greatest(total, done), done, 'done');
    COMMIT;
    elapsed := extract(epoch FROM clock_timestamp() - started);
    RAISE NOTICE 'qwen_embed backfill of %.%: done, % rows in % s (% rows/s)', tbl, vector_column, done,
        round(elapsed::numeric, 1), round((done / greatest(elapsed, 0.001))::numeric, 1);
END
$$;
