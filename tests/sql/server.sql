-- The model server (qwen_embed preloaded, qwen_embed.server on): one model for every session, forward passes shared
-- by sessions that wait at the same time, the same vectors as a backend's own model.
CREATE EXTENSION qwen_embed CASCADE;
CREATE EXTENSION dblink;

SELECT expect(vector_dims(embed('served by the model server')) = 64, 'embed through the server');
SELECT expect(value = 'server', 'route ' || value) FROM (SELECT info_value('info', 'route') AS value) kv;
SELECT expect(value = 'ready', 'server state ' || value) FROM (SELECT info_value('server_info', 'state') AS value) kv;
SELECT expect(value ~ 'tiny-qwen3$', 'server model ' || value) FROM (SELECT info_value('server_info', 'model_path') AS value) kv;

-- The server's vectors equal this backend's own model's (a copy of the same model: another model_path is computed in
-- the backend), for single texts, batches, instructions, Matryoshka, chunks and documents.
CREATE TEMP TABLE texts AS SELECT t FROM unnest(ARRAY['The cat sits on the mat.', '北京是中国的首都。', '',
    repeat('a longer text with many words ', 60), 'Instruct: x' || E'\n' || 'Query:y']) t;
CREATE TEMP TABLE served AS SELECT t, embed(t) AS v, embed(t, 'Find answers') AS q, embed(t, dim => 32) AS d FROM texts;
CREATE TEMP TABLE served_batch AS SELECT embed(array_agg(t ORDER BY t)) AS vs FROM texts;
CREATE TEMP TABLE jobs_before AS SELECT k, info_value('server_info', k)::bigint AS n
FROM unnest(ARRAY['document_requests', 'chunks_requests', 'chunks_texts', 'embed_requests']) k;
CREATE TEMP TABLE served_doc AS SELECT embed_document(repeat('Paragraph about storage. ', 400), 128, 16) AS v;
-- A document whose chunks differ from each other (numbered sentences), so that a shifted range or text shows.
CREATE TEMP TABLE chunked AS SELECT string_agg(format('Sentence %s is about storage engine %s. ', g, g % 5), '') AS doc
FROM generate_series(1, 300) g;
CREATE TEMP TABLE served_chunks AS SELECT c.* FROM chunked, embed_chunks(doc, 128, 16) c;
CREATE TEMP TABLE served_count AS SELECT token_count('The capital of China is Beijing.') AS n;
-- Documents and chunks are requests of their own kind in the server's queue, counted as such (one each here; the
-- chunks' texts are the rows embed_chunks returned).
SELECT expect(array_agg(info_value('server_info', k)::bigint - n ORDER BY k)
              = ARRAY[1, (SELECT count(*) FROM served_chunks), 1, 0],
              'server_info per kind: ' || string_agg(k || ' +' || (info_value('server_info', k)::bigint - n), ', ' ORDER BY k))
FROM jobs_before;
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/tiny-qwen3-copy', false);
SELECT expect(vector_dims(embed('now in this backend')) = 64, 'embed in the backend');
SELECT expect(value = 'backend', 'route ' || value) FROM (SELECT info_value('info', 'route') AS value) kv;
SELECT expect(max(1 - cosine_sim(v, embed(t))) < 1e-5, 'single texts differ') FROM served;
SELECT expect(max(1 - cosine_sim(q, embed(t, 'Find answers'))) < 1e-5, 'instructed texts differ') FROM served;
SELECT expect(max(1 - cosine_sim(d, embed(t, dim => 32))) < 1e-5 AND min(vector_dims(d)) = 32, 'Matryoshka differs')
FROM served;
SELECT expect((SELECT max(1 - cosine_sim(a, b)) FROM unnest(vs, (SELECT embed(array_agg(t ORDER BY t)) FROM texts)) x(a, b))
              < 1e-5, 'batches differ') FROM served_batch;
SELECT expect(1 - cosine_sim(v, embed_document(repeat('Paragraph about storage. ', 400), 128, 16)) < 1e-5,
              'documents differ') FROM served_doc;
-- Chunks: the same numbers, texts (the same ranges of the document) and vectors.
SELECT expect(count(*) = (SELECT count(*) FROM served_chunks) AND count(*) > 4
              AND bool_and(s.chunk = b.chunk) AND max(1 - cosine_sim(s.embedding, b.embedding)) < 1e-5,
              format('chunks differ: %s served, %s in the backend, texts equal %s, worst %s',
                     (SELECT count(*) FROM served_chunks), count(*), bool_and(s.chunk = b.chunk),
                     max(1 - cosine_sim(s.embedding, b.embedding))))
FROM chunked, embed_chunks(doc, 128, 16) b JOIN served_chunks s USING (chunk_no);
SELECT expect(n = token_count('The capital of China is Beijing.') AND n = 8, 'token counts differ') FROM served_count;
RESET qwen_embed.model_path;

-- The server's model named another way by the session is still the server's model: its calls go to the server, and
-- the backend loads no copy of its own for them.
SET qwen_embed.dtype = 'float32';
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/tiny-qwen3/', false);
SELECT expect(vector_dims(embed('the same model, spelled differently')) = 64, 'embed, the same model spelled differently');
SELECT expect(value = 'server', 'route of the same model spelled differently: ' || value)
FROM (SELECT info_value('info', 'route') AS value) kv;
RESET qwen_embed.dtype;
RESET qwen_embed.model_path;

-- Eight sessions asking at the same moment each get their vector through the server. (That waiting requests share a
-- forward pass is tested where a test can hold the server's compute thread and know which requests wait together:
-- crates/qwen_embed_server/tests/serving.rs. Here how many meet depends on the scheduler, so it is only shown.)
CREATE TEMP TABLE before AS SELECT value::bigint AS batches FROM (SELECT info_value('server_info', 'batches') AS value) kv;
SELECT dblink_connect('s' || i, 'dbname=' || current_database()) FROM generate_series(1, 8) i;
SELECT dblink_send_query('s' || i, format(
    $q$SELECT vector_dims(embed('concurrent question ' || %s || repeat(' with words', 40))) FROM pg_sleep_until(%L)$q$,
    i, clock_timestamp() + interval '1 second')) FROM generate_series(1, 8) i;
SELECT expect(count(*) = 8 AND bool_and(d = 64), 'a concurrent session failed')
FROM generate_series(1, 8) i, dblink_get_result('s' || i) AS r(d int);
SELECT dblink_disconnect('s' || i) FROM generate_series(1, 8) i;
DO $$ BEGIN RAISE NOTICE 'qwen_embed test: 8 concurrent single queries took % batches in the model server',
    (SELECT value::bigint FROM (SELECT info_value('server_info', 'batches') AS value) kv) - (SELECT batches FROM before); END $$;

-- Errors through the server keep their SQLSTATE, message and hint, and count in its errors (from a baseline: the
-- counter is the cluster's running total).
CREATE TEMP TABLE errors_before AS SELECT info_value('server_info', 'errors')::int AS errors;
SELECT expect_error($q$SELECT embed('hello', dim => 8)$q$, '22023', 'dim must be between 32 and 64, got 8',
                    'Pass NULL for the model''s full dimension');
SET qwen_embed.max_length = 4;
SELECT expect_error($q$SELECT embed('The capital of China is Beijing.')$q$, '54000',
                    'input is 8 tokens long, which exceeds max_length 4', 'set qwen_embed.truncate = on');
RESET qwen_embed.max_length;
SELECT expect(value::int - errors = 2, 'server errors: ' || value::int - errors || ' more, expected 2')
FROM (SELECT info_value('server_info', 'errors') AS value) kv, errors_before;
