-- qwen_embed.create_embedding_triggers(table, text_column, vector_column [, instruct] [, mode => 'sync' | 'async'])
-- Attaches the triggers that keep vector_column = embed(text_column [, instruct]).
-- mode 'sync' (the default): the writing statement embeds its rows:
-- - AFTER INSERT and AFTER UPDATE, FOR EACH STATEMENT (qwen_embed_trigger): embed the statement's rows that have a
--   text and no vector, in batches. PostgreSQL allows transition tables only on single-event triggers, hence two.
-- - BEFORE UPDATE, FOR EACH ROW, only when the text changes and the statement leaves the vector as it was
--   (qwen_embed_clear_on_change): clears the row's vector. A row trigger sees each row's OLD and NEW exactly, so statements that change the
--   primary key, INSERT … ON CONFLICT DO UPDATE and MERGE are handled like any UPDATE.
-- A vector given explicitly by INSERT or UPDATE is kept.
-- mode 'async': the writing statement only queues its rows (sql/async/) and the database's background worker
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
