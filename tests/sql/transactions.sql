-- Triggers inside real transactions: rollback, a failing multi-row statement, and batching counted by the server.
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('docs', 'body', 'embedding');

-- Inside the transaction the statement's rows have their vectors (written through SPI, in the same transaction: the
-- rollback takes them back with the rows, which is PostgreSQL's part and not checked here).
BEGIN;
INSERT INTO docs (body) SELECT 'rolled back ' || g FROM generate_series(1, 100) g;
DO $$ BEGIN ASSERT (SELECT count(*) FROM docs WHERE embedding IS NOT NULL) = 100, 'the trigger did not embed in the transaction'; END $$;
ROLLBACK;

-- A statement that fails after the trigger embedded and wrote its rows' vectors (a deferred unique constraint, checked
-- by SET CONSTRAINTS once the statement is done): nothing of it stays.
ALTER TABLE docs ADD COLUMN tag int UNIQUE DEFERRABLE INITIALLY DEFERRED;
DO $$
BEGIN
    INSERT INTO docs (body, tag) VALUES ('one', 1), ('two', 1);
    ASSERT (SELECT count(*) FROM docs WHERE embedding IS NOT NULL) = 2, 'the trigger did not embed both rows';
    SET CONSTRAINTS ALL IMMEDIATE;
    RAISE EXCEPTION 'the duplicate tag should have failed';
EXCEPTION WHEN unique_violation THEN
    NULL; -- the block's rows and vectors are rolled back together (PostgreSQL's part)
END $$;

-- 1000 rows in one statement: a handful of forward passes, every vector equal to a direct call.
CREATE TEMP TABLE before AS SELECT value::bigint AS passes FROM (SELECT info_value('info', 'forward_passes') AS value) kv;
INSERT INTO docs (body) SELECT 'document number ' || g FROM generate_series(1, 1000) g;
DO $$
DECLARE
    passes bigint := (SELECT value::bigint FROM (SELECT info_value('info', 'forward_passes') AS value) kv) - (SELECT passes FROM before);
BEGIN
    ASSERT passes BETWEEN 1 AND 10, format('1000 rows took %s forward passes', passes); -- not 1000
    ASSERT (SELECT count(*) FROM docs WHERE embedding IS NULL) = 0, 'rows left without embedding';
    ASSERT (SELECT max(abs(cosine_sim(embedding, embed(body)) - 1)) FROM docs WHERE id % 97 = 0) < 1e-5,
        'trigger vectors differ from direct calls';
END $$;

-- A committed row survives; its vector follows an UPDATE of the text.
UPDATE docs SET body = 'a new text' WHERE id = (SELECT min(id) FROM docs);
DO $$ BEGIN
    ASSERT (SELECT cosine_sim(embedding, embed('a new text')) FROM docs WHERE body = 'a new text') > 0.99999,
        'update not re-embedded';
END $$;
