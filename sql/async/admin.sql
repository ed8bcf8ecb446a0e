-- Asynchronous embedding, part 4 of 4: what users call and see: the status views, waiting, retrying, dropping and
-- repairing, and what create_embedding_triggers and set_embedding_mode call (queue.sql has the whole design).

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
