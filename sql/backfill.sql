-- CALL qwen_embed.backfill(tbl, text_column, vector_column, instruct => NULL, batch => 64, dim => NULL)
--
-- Fills vector_column = embed(text_column) for the rows where it is NULL (and the text is not), `batch` rows per
-- forward pass and per transaction: each batch commits, so an interrupted run keeps what it did and a second CALL
-- resumes where it stopped. Rows are taken with FOR UPDATE SKIP LOCKED and written only if still NULL, so it runs
-- safely alongside inserts, updates and a second backfill. Progress: a NOTICE every few seconds, and the view
-- qwen_embed.backfill_status, which any session can query.
--
-- Must be CALLed outside an explicit transaction block (it commits). A procedure that commits cannot carry a
-- SET search_path clause, so everything below is schema-qualified instead.

CREATE TABLE qwen_embed.backfill_progress (
    relation      regclass    NOT NULL,
    vector_column name        NOT NULL,
    text_column   name        NOT NULL,
    pid           integer     NOT NULL,
    state         text        NOT NULL CHECK (state IN ('running', 'done')),
    rows_total    bigint      NOT NULL,
    rows_done     bigint      NOT NULL,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (relation, vector_column)
);
-- Each role reads and writes the progress of the columns it may update, and no other: row-level security checks the
-- privilege as the caller (a SECURITY DEFINER function would check its owner's). The view below shows every row.
ALTER TABLE qwen_embed.backfill_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY may_update_the_column ON qwen_embed.backfill_progress
    USING (pg_catalog.has_column_privilege(relation, vector_column, 'UPDATE'));
GRANT SELECT, INSERT, UPDATE ON qwen_embed.backfill_progress TO PUBLIC;

-- How the procedure writes its progress; says clearly when the caller may not update the column being filled.
-- event: 'start' (a run begins: the clock restarts), 'progress' or 'done'.
CREATE FUNCTION qwen_embed.backfill_report(
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

CREATE VIEW qwen_embed.backfill_status AS
SELECT relation, text_column, vector_column, pid,
       CASE WHEN state = 'done' THEN 'done'
            -- Running while the backend that started it is still in the statement that started it.
            WHEN EXISTS (SELECT FROM pg_catalog.pg_stat_activity a
                          WHERE a.pid = p.pid AND a.state = 'active' AND a.query_start <= p.started_at) THEN 'running'
            ELSE 'interrupted' END AS state,
       rows_done, rows_total,
       round(100.0 * rows_done / greatest(rows_total, 1), 1) AS percent,
       round((rows_done / greatest(extract(epoch FROM updated_at - started_at), 0.001))::numeric, 1) AS rows_per_s,
       CASE WHEN state = 'running' AND rows_done > 0
            THEN (updated_at - started_at) * ((rows_total - rows_done)::float8 / rows_done) END AS eta,
       started_at, updated_at
FROM qwen_embed.backfill_progress p;
GRANT SELECT ON qwen_embed.backfill_status TO PUBLIC;

CREATE PROCEDURE qwen_embed.backfill(
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

COMMENT ON PROCEDURE qwen_embed.backfill(regclass, name, name, text, integer, integer) IS
    'Fill vector_column = embed(text_column) where it is NULL, committing every batch; progress in qwen_embed.backfill_status';
