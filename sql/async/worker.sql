-- Asynchronous embedding, part 3 of 4: the worker's side, the functions prefixed _async_ that only it calls
-- (src/async_embed/worker.rs; queue.sql has the whole design).

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
