-- The product brief's workflow end to end: sentence pairs, a 500-row document table filled by the trigger, a top-3
-- question served by an HNSW index (checked in EXPLAIN), the per-row cosine_sim form computed with one forward pass,
-- and a similarity threshold.
CREATE EXTENSION qwen_embed CASCADE;

SELECT a, b, round(semantic_similarity(a, b)::numeric, 4) AS similarity
FROM (VALUES ('The cat sits on the mat.', 'A cat is sitting on a mat.'),
             ('He plays the guitar.', 'The stock market fell today.'),
             ('北京是中国的首都。', 'Beijing is the capital of China.'),
             ('I love pizza', 'I love pizza'),
             ('How do I reset my password?', 'Click "Forgot password" on the login page.')) AS pairs(a, b);
SELECT expect(abs(semantic_similarity('I love pizza', 'I love pizza') - 1) < 1e-6
              AND semantic_similarity('The cat sits on the mat.', 'A cat is sitting on a mat.') BETWEEN -1 AND 1
              AND semantic_similarity('He plays the guitar.', 'The stock market fell today.')
                  <> semantic_similarity('The cat sits on the mat.', 'A cat is sitting on a mat.'),
              'a text is not its own nearest, or two pairs score the same');

CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('docs', 'body', 'embedding');
INSERT INTO docs SELECT g, 'Document ' || g || ' is about topic ' || (g % 17) FROM generate_series(1, 500) g;
CREATE INDEX docs_hnsw ON docs USING hnsw (embedding vector_cosine_ops);
ANALYZE docs;

\set question '''Which document is about topic 3?'''
\set instruct '''Given a web search query, retrieve relevant passages that answer the query'''
EXPLAIN (COSTS OFF) SELECT id FROM docs ORDER BY embedding <=> embed(:question, :instruct) LIMIT 3;
CREATE FUNCTION plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE line text; plan text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP plan := plan || line || E'\n'; END LOOP;
    RETURN plan;
END $$;
SELECT expect(strpos(plan_of($q$SELECT id FROM docs ORDER BY embedding <=> embed('Which document is about topic 3?',
        'Given a web search query, retrieve relevant passages that answer the query') LIMIT 3$q$),
        'Index Scan using docs_hnsw') > 0, 'top-3 query does not use the HNSW index');

SELECT id, body FROM docs ORDER BY embedding <=> embed(:question, :instruct) LIMIT 3;

-- The same rows as an exact scan.
CREATE TEMP TABLE indexed AS SELECT id FROM docs ORDER BY embedding <=> embed(:question, :instruct) LIMIT 3;
SET enable_indexscan = off;
CREATE TEMP TABLE exact AS SELECT id FROM docs ORDER BY embedding <=> embed(:question, :instruct) LIMIT 3;
RESET enable_indexscan;
SELECT expect((SELECT array_agg(id ORDER BY id) FROM indexed) = (SELECT array_agg(id ORDER BY id) FROM exact),
              'the index and the exact scan disagree');

-- The brief's per-row form: 500 rows, one forward pass for the question, with the result cache off.
SET qwen_embed.cache_size = 0;
CREATE TEMP TABLE before AS SELECT value::bigint AS passes FROM (SELECT info_value('info', 'forward_passes') AS value) kv;
SELECT id FROM docs ORDER BY cosine_sim(embedding, embed('a question asked only once')) DESC LIMIT 3;
SELECT expect(value::bigint - (SELECT passes FROM before) = 1,
              format('the per-row form ran %s forward passes', value::bigint - (SELECT passes FROM before)))
FROM (SELECT info_value('info', 'forward_passes') AS value) kv;

RESET qwen_embed.cache_size;

-- Threshold filter, for a question that is none of the rows: the rows above the 90th percentile of similarity are
-- the same whether cosine_sim or pgvector's <=> computes it, and they are some rows, not none or all.
CREATE TEMP TABLE question AS SELECT embed('Which documents talk about topic 8?') AS q;
CREATE TEMP TABLE cut AS
SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY cosine_sim(embedding, q)) AS t FROM docs, question;
SELECT count(*) AS above_threshold FROM docs, cut
WHERE cosine_sim(embedding, embed('Which documents talk about topic 8?')) > t;
-- percentile_cont(0.9) of 500 distinct values lies between the 450th and the 451st: exactly 50 rows are above it,
-- when the filter's embed() of the question is the vector the threshold was computed from.
SELECT expect(abs(mine - theirs) <= near AND mine = 50 AND distinct_values = 500,
              format('%s rows by cosine_sim, %s by <=> (%s within 1e-6 of the threshold), %s distinct similarities',
                     mine, theirs, near, distinct_values))
FROM (SELECT count(*) FILTER (WHERE cosine_sim(embedding, embed('Which documents talk about topic 8?')) > t) AS mine,
             count(*) FILTER (WHERE 1 - (embedding <=> q) > t) AS theirs,
             count(*) FILTER (WHERE abs(1 - (embedding <=> q) - t) <= 1e-6) AS near,
             count(DISTINCT cosine_sim(embedding, q)) AS distinct_values
      FROM docs, question, cut) s;
-- cosine_sim is the cosine, computed here from the components in plain SQL, for every row.
SELECT expect(max(abs(cosine_sim(embedding, q) - dot / sqrt(na * nb))) < 1e-6, 'cosine_sim differs from the cosine')
FROM (SELECT d.embedding, question.q,
             (SELECT sum(a * b) FROM unnest(d.embedding::real[], question.q::real[]) AS u(a, b)) AS dot,
             (SELECT sum(a * a) FROM unnest(d.embedding::real[]) AS u(a)) AS na,
             (SELECT sum(b * b) FROM unnest(question.q::real[]) AS u(b)) AS nb
      FROM docs d, question) c;
