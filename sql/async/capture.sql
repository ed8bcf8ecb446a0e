-- Asynchronous embedding, part 2 of 4: the writers' side (queue.sql has the whole design).

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
