-- Embedding triggers as a user sees them: which triggers exist, and that every statement form leaves each row's vector
-- equal to a fresh embed() of its text.
-- Whichever file runs first creates the extension; none shows a NOTICE about it (the files run in any order).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS qwen_embed CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never
CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('docs', 'body', 'embedding');
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'docs'::regclass ORDER BY tgname;

CREATE VIEW stale AS
SELECT count(*) FILTER (WHERE body IS NOT NULL AND (embedding IS NULL OR 1 - cosine_sim(embedding, embed(body)) > 1e-5))
           AS stale,
       count(*) FILTER (WHERE body IS NULL AND embedding IS NOT NULL) AS vector_without_text,
       count(*) AS rows
FROM docs;

INSERT INTO docs (id, body) VALUES (1, 'first'), (2, 'second'), (3, NULL);
SELECT * FROM stale;
UPDATE docs SET id = id + 10, body = body || ' changed';
SELECT * FROM stale;
INSERT INTO docs (id, body) VALUES (11, 'upserted') ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body;
SELECT * FROM stale;
-- MERGE is PostgreSQL 15's: expected/triggers_1.out is this file's output on 13 and 14, where it is a syntax error.
MERGE INTO docs USING (VALUES (12, 'merged'), (14, 'new')) AS s(id, body) ON docs.id = s.id
WHEN MATCHED THEN UPDATE SET body = s.body WHEN NOT MATCHED THEN INSERT (id, body) VALUES (s.id, s.body);
SELECT * FROM stale;
UPDATE docs SET body = NULL WHERE id = 14;
SELECT * FROM stale;

-- A table without a primary key, and an UPDATE trigger without its row trigger.
CREATE TABLE nokey (body text, emb vector);
SELECT qwen_embed.create_embedding_triggers('nokey', 'body', 'emb');
INSERT INTO nokey VALUES ('x');
CREATE TABLE half (id int PRIMARY KEY, body text, embedding vector(64));
CREATE TRIGGER t AFTER UPDATE ON half REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION qwen_embed_trigger('body', 'embedding');
INSERT INTO half VALUES (1, 'x');
UPDATE half SET body = 'y';
