-- qwen_embed.create_embedding_triggers(table, text_column, vector_column [, instruct])
-- Attaches the triggers that keep vector_column = embed(text_column [, instruct]):
-- - AFTER INSERT and AFTER UPDATE, FOR EACH STATEMENT (qwen_embed_trigger): embed the statement's rows that have a
--   text and no vector, in batches. PostgreSQL allows transition tables only on single-event triggers, hence two.
-- - BEFORE UPDATE, FOR EACH ROW, only when the text changes and the statement leaves the vector as it was
--   (qwen_embed_clear_on_change): clears the row's vector. A row trigger sees each row's OLD and NEW exactly, so statements that change the
--   primary key, INSERT … ON CONFLICT DO UPDATE and MERGE are handled like any UPDATE.
-- A vector given explicitly by INSERT or UPDATE is kept.
CREATE FUNCTION qwen_embed.create_embedding_triggers(
    tbl regclass,
    text_column name,
    vector_column name,
    instruct text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    columns text := quote_literal(text_column) || ', ' || quote_literal(vector_column);
    args text := columns || coalesce(', ' || quote_literal(instruct), '');
    -- pgvector's = for the vector column, schema-qualified (this function runs with a fixed search_path).
    vector_eq text := (
        SELECT format('OPERATOR(%I.=)', n.nspname)
        FROM pg_attribute a
        JOIN pg_operator o ON o.oprname = '=' AND o.oprleft = a.atttypid AND o.oprright = a.atttypid
        JOIN pg_namespace n ON n.oid = o.oprnamespace
        WHERE a.attrelid = tbl AND a.attname = vector_column AND NOT a.attisdropped);
BEGIN
    IF vector_eq IS NULL THEN
        RAISE EXCEPTION 'qwen_embed: column % of % is not of type vector', quote_literal(vector_column), tbl
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    -- Fires when the text changes and the statement leaves the vector as it was (NULL = NULL counts as unchanged;
    -- a NULL on one side only makes the condition NULL, so it does not fire: the statement set or cleared it).
    EXECUTE format(
        'CREATE TRIGGER %I BEFORE UPDATE ON %s FOR EACH ROW '
        'WHEN (OLD.%I IS DISTINCT FROM NEW.%I AND (OLD.%I IS NULL AND NEW.%I IS NULL OR OLD.%I %s NEW.%I)) '
        'EXECUTE FUNCTION @extschema@.qwen_embed_clear_on_change(%s)',
        'qwen_embed_' || vector_column || '_clear', tbl, text_column, text_column,
        vector_column, vector_column, vector_column, vector_eq, vector_column, columns);
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_embed_new '
        'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.qwen_embed_trigger(%s)',
        'qwen_embed_' || vector_column || '_insert', tbl, args);
    EXECUTE format(
        'CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING NEW TABLE AS qwen_embed_new '
        'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.qwen_embed_trigger(%s)',
        'qwen_embed_' || vector_column || '_update', tbl, args);
END
$$;

COMMENT ON FUNCTION qwen_embed.create_embedding_triggers(regclass, name, name, text) IS
    'Create the triggers that embed text_column into vector_column: per statement on INSERT and UPDATE, in batches';
