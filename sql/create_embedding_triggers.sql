-- qwen_embed.create_embedding_triggers(table, text_column, vector_column [, instruct])
-- Attaches the two statement-level triggers that keep vector_column = embed(text_column [, instruct]):
-- one AFTER INSERT (new rows) and one AFTER UPDATE (rows whose text changed). PostgreSQL allows transition tables
-- only on single-event triggers, hence two.
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
    args text := quote_literal(text_column) || ', ' || quote_literal(vector_column)
                 || coalesce(', ' || quote_literal(instruct), '');
BEGIN
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS qwen_embed_new '
        'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.qwen_embed_trigger(%s)',
        'qwen_embed_' || vector_column || '_insert', tbl, args);
    EXECUTE format(
        'CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS qwen_embed_old NEW TABLE AS qwen_embed_new '
        'FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.qwen_embed_trigger(%s)',
        'qwen_embed_' || vector_column || '_update', tbl, args);
END
$$;

COMMENT ON FUNCTION qwen_embed.create_embedding_triggers(regclass, name, name, text) IS
    'Create the INSERT and UPDATE triggers that embed text_column into vector_column in batches per statement';
