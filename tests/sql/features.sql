-- Features checked by value, each in a way that fails if the feature breaks: the result cache, the model server's
-- batch limit, Matryoshka dimensions on arrays and chunks on both routes, document weightings on the server, argument
-- checks, the server's idle trim, backfill with an instruction and dimensions, the backfill progress view's figures and its privileges, and
-- the triggers' column type check. Routes: the server runs the cluster's model; a copy of the same model set in the
-- session runs in the backend.
CREATE EXTENSION qwen_embed CASCADE;

-- A new model server, so that its lifetime maxima (max_batch_tokens, max_text_tokens) are this file's alone (earlier
-- files' long texts would widen the bound checked below). The setting is put back at the end of the file.
CREATE TEMP TABLE old_server AS SELECT info_value('server_info', 'pid') AS pid;
SELECT format('ALTER SYSTEM SET qwen_embed.server_queue_limit = %s',
              current_setting('qwen_embed.server_queue_limit')::int + 1) \gexec
SELECT pg_reload_conf();
SELECT wait_for_new_server(pid) FROM old_server;

-- A unit vector's first `d` dimensions renormalised: what dim => d must return.
CREATE FUNCTION prefix(v vector, d int) RETURNS vector LANGUAGE sql AS 'SELECT l2_normalize(subvector(v, 1, d))';
CREATE FUNCTION counter(k text) RETURNS bigint LANGUAGE sql AS 'SELECT info_value(''info'', k)::bigint';

-- The result cache: a repeated single text is answered without running the model.
SELECT expect(vector_dims(embed('a text asked twice')) = 64, 'first call');
CREATE TEMP TABLE before AS SELECT counter('cache_hits') AS hits, counter('forward_passes') AS passes,
    counter('texts') AS texts;
SELECT expect(vector_dims(embed('a text asked twice')) = 64, 'second call');
SELECT expect(counter('cache_hits') = hits + 1, format('cache_hits %s -> %s', hits, counter('cache_hits')))
FROM before;
SELECT expect(counter('forward_passes') = passes AND counter('texts') = texts, 'the repeat ran the model') FROM before;
-- A different instruction or dimension is another result, computed.
SELECT expect(vector_dims(embed('a text asked twice', 'Find it')) = 64, 'instructed call');
SELECT expect(counter('cache_hits') = hits + 1 AND counter('texts') = texts + 1, 'an instructed text hit the cache')
FROM before;
SET qwen_embed.cache_size = 0;
SELECT expect(vector_dims(embed('a text asked twice')) = 64, 'uncached call');
SELECT expect(counter('cache_hits') = hits + 1 AND counter('texts') = texts + 2, 'cache_size = 0 still cached')
FROM before;
RESET qwen_embed.cache_size;

-- qwen_embed.server_batch_tokens bounds every batch the server computes (the test cluster's value, from the setting).
SELECT expect(info_value('server_info', 'batch_tokens') = current_setting('qwen_embed.server_batch_tokens'),
              'server batch_tokens ' || info_value('server_info', 'batch_tokens'));
SELECT expect(cardinality(embed(array_agg('a sentence of some length, number ' || g || repeat(' word', 60)))) = 64,
              'a 64-text array') FROM generate_series(1, 64) g;
-- The new server has computed this file's texts only, every one shorter than the limit: no batch is over it, and the
-- 64 texts of about 70 tokens filled batches well past 1,000 tokens.
SELECT expect(info_value('server_info', 'max_text_tokens')::int < current_setting('qwen_embed.server_batch_tokens')::int,
              'a text of this file is longer than the batch limit: ' || info_value('server_info', 'max_text_tokens'));
SELECT expect(info_value('server_info', 'max_batch_tokens')::int <= current_setting('qwen_embed.server_batch_tokens')::int,
              format('a batch of %s tokens, over the limit of %s', info_value('server_info', 'max_batch_tokens'),
                     current_setting('qwen_embed.server_batch_tokens')));
SELECT expect(info_value('server_info', 'max_batch_tokens')::int > 1000,
              'the batches were not filled: ' || info_value('server_info', 'max_batch_tokens'));

-- The server's memory: its heap in use, and its free memory handed back after a second without work.
SELECT expect(info_value('server_info', 'heap_bytes_in_use')::bigint > 10000000,
              format('heap_bytes_in_use %s, less than the model', info_value('server_info', 'heap_bytes_in_use')));
-- A request just before the count is read: the server is not idle then, so its next trim comes after the count.
SELECT expect(vector_dims(embed('work before the idle period, ' || clock_timestamp())) = 64, 'work before the idle period');
CREATE TEMP TABLE trims AS SELECT info_value('server_info', 'idle_trims')::int AS n;
SELECT pg_sleep(1.5);
SELECT expect(info_value('server_info', 'idle_trims')::int > n, 'no idle trim after 1.5 s without work') FROM trims;

-- Matryoshka dimensions of arrays and chunks, on the server and in the backend: the renormalised prefix.
CREATE TEMP TABLE routes (route text, array_err float8, chunk_err float8, chunk_dims int);
CREATE FUNCTION check_dims() RETURNS void LANGUAGE plpgsql AS $$
DECLARE doc text := repeat('Storage engines keep pages in a buffer pool. ', 80);
BEGIN
    INSERT INTO routes
    SELECT info_value('info', 'route'),
           (SELECT max(1 - cosine_sim(a, prefix(embed(t), 32)))
              FROM unnest(embed(ARRAY['first text', 'second, longer text', '北京'], dim => 32),
                          ARRAY['first text', 'second, longer text', '北京']) u(a, t)
             WHERE vector_dims(a) = 32),
           (SELECT max(1 - cosine_sim(s.embedding, prefix(f.embedding, 32)))
              FROM embed_chunks(doc, 64, 8, dim => 32) s JOIN embed_chunks(doc, 64, 8) f USING (chunk_no)),
           (SELECT min(vector_dims(embedding)) FROM embed_chunks(doc, 64, 8, dim => 32));
END $$;
SELECT check_dims();
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/tiny-qwen3-copy', false);
SELECT check_dims();
RESET qwen_embed.model_path;
SELECT expect(array_agg(route ORDER BY route) = '{backend,server}', 'routes ' || array_agg(route)::text) FROM routes;
SELECT expect(array_err < 1e-5 AND chunk_err < 1e-5 AND chunk_dims = 32,
              format('%s: array %s, chunks %s, %s dims', route, array_err, chunk_err, chunk_dims))
FROM routes;

-- qwen_embed.batch_tokens bounds the forward passes of a backend's own model: 12 texts of L tokens each, in passes
-- of at most 64 padded tokens, take ceil(12 / floor(64 / L)) passes; with the default budget, one.
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/tiny-qwen3-copy', false);
SET qwen_embed.cache_size = 0;
CREATE TEMP TABLE same_length AS
SELECT array_agg('budget text number ' || chr(96 + g) || ' of twelve') AS texts,
       min(token_count('budget text number ' || chr(96 + g) || ' of twelve')) AS l,
       max(token_count('budget text number ' || chr(96 + g) || ' of twelve')) AS l_max
FROM generate_series(1, 12) g;
CREATE TEMP TABLE passes (budget int, n bigint);
INSERT INTO passes SELECT 0, info_value('info', 'forward_passes')::bigint;
SET qwen_embed.batch_tokens = 64;
SELECT cardinality(embed(texts)) FROM same_length;
INSERT INTO passes SELECT 64, info_value('info', 'forward_passes')::bigint;
SET qwen_embed.batch_tokens = 8192;
SELECT cardinality(embed(texts)) FROM same_length;
INSERT INTO passes SELECT 8192, info_value('info', 'forward_passes')::bigint;
RESET qwen_embed.batch_tokens;
SELECT expect(l = l_max AND l BETWEEN 6 AND 32, format('the texts are %s to %s tokens', l, l_max)) FROM same_length;
SELECT expect(small = ceil(12.0 / (64 / l)) AND large = 1 AND info_value('info', 'route') = 'backend',
              format('12 texts of %s tokens: %s passes with batch_tokens 64, %s with 8192, route %s',
                     l, small, large, info_value('info', 'route')))
FROM same_length,
     (SELECT max(n) FILTER (WHERE budget = 64) - max(n) FILTER (WHERE budget = 0) AS small,
             max(n) FILTER (WHERE budget = 8192) - max(n) FILTER (WHERE budget = 64) AS large FROM passes) p;
RESET qwen_embed.cache_size;
RESET qwen_embed.model_path;

-- embed_document's weightings on the server: the weighted mean of its chunks' vectors, renormalised, where the
-- weights are 1 (uniform) or 1 + |2i/(n-1) - 1| (position, 2 at both ends); each weighting gives its own vector.
CREATE TEMP TABLE doc AS
SELECT string_agg(format('Section %s talks about topic %s in its own words. ', g, g % 7), '') AS body
FROM generate_series(1, 60) g;
CREATE FUNCTION reference(body text, weighting text) RETURNS vector LANGUAGE sql AS $$
    WITH c AS (SELECT chunk_no, embedding, count(*) OVER () AS n, row_number() OVER (ORDER BY chunk_no) - 1 AS i
                 FROM embed_chunks(body, 96, 16)),
         w AS (SELECT embedding, CASE WHEN weighting = 'uniform' OR n < 2 THEN 1.0
                                      ELSE 1 + abs(2.0 * i / (n - 1) - 1) END AS w FROM c),
         s AS (SELECT d, sum(w * x) AS x FROM w, unnest(embedding::real[]) WITH ORDINALITY u(x, d) GROUP BY d)
    SELECT l2_normalize(array_agg(x ORDER BY d)::real[]::vector) FROM s
$$;
SELECT expect((SELECT count(*) FROM embed_chunks(body, 96, 16)) >= 4, 'the document makes few chunks') FROM doc;
SELECT expect(info_value('info', 'route') = 'server', 'the chunks were not the server''s');
SELECT expect(1 - cosine_sim(embed_document(body, 96, 16, w), reference(body, w)) < 1e-5,
              format('%s weighting differs from its reference by %s', w,
                     1 - cosine_sim(embed_document(body, 96, 16, w), reference(body, w))))
FROM doc, unnest(ARRAY['uniform', 'position']) w;
SELECT expect(1 - cosine_sim(embed_document(body, 96, 16, 'uniform'), embed_document(body, 96, 16, a)) > 1e-6,
              a || ' weighting equals uniform')
FROM doc, unnest(ARRAY['position', 'tokens']) a;
-- 'tokens' on the server equals 'tokens' in the backend.
CREATE TEMP TABLE served_tokens AS SELECT embed_document(body, 96, 16, 'tokens') AS v FROM doc;
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/tiny-qwen3-copy', false);
SELECT expect(1 - cosine_sim(v, (SELECT embed_document(body, 96, 16, 'tokens') FROM doc)) < 1e-5,
              'tokens weighting: server and backend differ') FROM served_tokens;
SELECT expect(info_value('info', 'route') = 'backend', 'the copy was not computed in the backend');
RESET qwen_embed.model_path;

-- Arguments out of range are ERRORs that name them.
SELECT expect_error($$SELECT * FROM embed_chunks('some text', -1)$$, '22023', 'chunk_tokens must not be negative');
SELECT expect_error($$SELECT * FROM embed_chunks('some text', 64, -5)$$, '22023', 'overlap must not be negative');
SELECT expect_error($$SELECT embed_document('some text', -1)$$, '22023', 'chunk_tokens must not be negative');
SELECT expect_error($$SELECT embed_document('some text', 64, -1)$$, '22023', 'overlap must not be negative');

-- backfill with an instruction and dimensions writes embed(text, instruct, dim); batch < 1 is refused.
CREATE TABLE notes (id int PRIMARY KEY, body text, embedding vector(32));
INSERT INTO notes SELECT g, 'note number ' || g || repeat(' and more', g % 9) FROM generate_series(1, 50) g;
CALL qwen_embed.backfill('notes', 'body', 'embedding', instruct => 'Find the note', batch => 7, dim => 32);
SELECT expect(count(*) = 50 AND max(1 - cosine_sim(embedding, embed(body, 'Find the note', 32))) < 1e-5,
              format('%s rows, worst %s', count(*), max(1 - cosine_sim(embedding, embed(body, 'Find the note', 32)))))
FROM notes;
SELECT expect(max(1 - cosine_sim(embedding, embed(body, dim => 32))) > 1e-4, 'the instruction was not used')
FROM notes;
DO $$
BEGIN
    CALL qwen_embed.backfill('notes', 'body', 'embedding', batch => 0);
    RAISE EXCEPTION 'batch => 0 was accepted';
EXCEPTION WHEN invalid_parameter_value THEN
    PERFORM expect(SQLERRM LIKE '%batch must be at least 1, got 0%', SQLERRM);
END $$;

-- backfill_status: percent, rows/s and the ETA from a progress row with known figures (250 of 1000 rows in 10 s).
INSERT INTO qwen_embed.backfill_progress
VALUES ('notes', 'embedding', 'body', pg_backend_pid(), 'running', 1000, 250,
        '2026-01-01 00:00:00+00', '2026-01-01 00:00:10+00')
ON CONFLICT (relation, vector_column) DO UPDATE SET state = excluded.state, rows_total = excluded.rows_total,
    rows_done = excluded.rows_done, started_at = excluded.started_at, updated_at = excluded.updated_at;
SELECT expect(percent = 25.0 AND rows_per_s = 25.0 AND eta = interval '30 seconds',
              format('percent %s, rows/s %s, eta %s', percent, rows_per_s, eta))
FROM qwen_embed.backfill_status WHERE relation = 'notes'::regclass;
UPDATE qwen_embed.backfill_progress SET state = 'done', rows_done = 1000 WHERE relation = 'notes'::regclass;
SELECT expect(percent = 100.0 AND rows_per_s = 100.0 AND eta IS NULL AND state = 'done',
              format('done: percent %s, rows/s %s, eta %s', percent, rows_per_s, eta))
FROM qwen_embed.backfill_status WHERE relation = 'notes'::regclass;

-- The progress of a column is written only by roles that may update that column.
CREATE ROLE qwen_embed_reader;
GRANT SELECT ON notes TO qwen_embed_reader;
GRANT USAGE ON SCHEMA qwen_embed TO qwen_embed_reader;
SET ROLE qwen_embed_reader;
SELECT expect_error($$SELECT qwen_embed.backfill_report('notes', 'body', 'embedding', 1, 1, 'progress')$$, '42501',
                    'permission denied to update column embedding of public.notes');
SELECT expect((SELECT count(*) FROM qwen_embed.backfill_progress) = 0, 'a reader sees progress it may not write');
UPDATE qwen_embed.backfill_progress SET rows_done = 0;
SELECT expect_error($$INSERT INTO qwen_embed.backfill_progress VALUES ('notes', 'embedding', 'body', 1, 'running',
                      1, 1, now(), now())$$, '42501', 'row-level security');
RESET ROLE;
SELECT expect(rows_done = 1000, 'a reader changed the progress: ' || rows_done)
FROM qwen_embed.backfill_progress WHERE relation = 'notes'::regclass;
GRANT UPDATE (embedding) ON notes TO qwen_embed_reader;
SET ROLE qwen_embed_reader;
SELECT qwen_embed.backfill_report('notes', 'body', 'embedding', 10, 5, 'progress');
RESET ROLE;
SELECT expect(rows_done = 5 AND rows_total = 10, 'an allowed report was not written')
FROM qwen_embed.backfill_progress WHERE relation = 'notes'::regclass;
REVOKE ALL ON notes FROM qwen_embed_reader;
REVOKE USAGE ON SCHEMA qwen_embed FROM qwen_embed_reader;
DROP ROLE qwen_embed_reader;

-- Triggers need a vector column to write.
SELECT expect_error($$SELECT qwen_embed.create_embedding_triggers('notes', 'body', 'body')$$, '42804', 'vector');

ALTER SYSTEM RESET qwen_embed.server_queue_limit;
SELECT pg_reload_conf();
