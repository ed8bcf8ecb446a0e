-- The reranker in SQL: through the model server (qwen_embed.reranker_path in the cluster's configuration, loaded on
-- the first rerank), equal to a backend's own copy, and two-stage retrieval in one statement.
CREATE EXTENSION qwen_embed CASCADE;

-- A model server that has not reranked yet, whatever earlier files did: a changed server setting makes the
-- supervisor start a new one (the setting is reset at the end of this file).
CREATE TEMP TABLE old_server AS SELECT info_value('server_info', 'pid') AS pid;
SELECT format('ALTER SYSTEM SET qwen_embed.server_queue_limit = %s',
              current_setting('qwen_embed.server_queue_limit')::int + 1) \gexec
SELECT pg_reload_conf();
SELECT wait_for_new_server(pid) FROM old_server;

SELECT expect(value = 'not loaded', 'reranker before first use: ' || value)
FROM (SELECT info_value('server_info', 'reranker_state') AS value) kv;
CREATE TEMP TABLE pairs AS SELECT * FROM (VALUES
    (1, 'What is the capital of China?', 'The capital of China is Beijing.', NULL),
    (2, 'What is the capital of China?', 'Gravity pulls bodies towards each other.', NULL),
    (3, 'Explain gravity', 'Gravity is a force that attracts two bodies.', 'Judge whether the passage is about physics'),
    (4, '北京有多少人口？', '北京是中国的首都，人口约两千万。', NULL),
    (5, '', '', NULL)) p(id, q, d, instruct);
CREATE TEMP TABLE served AS SELECT id, rerank_score(q, d, instruct) AS s FROM pairs;
SELECT expect(value LIKE 'ready%', 'reranker after first use: ' || value)
FROM (SELECT info_value('server_info', 'reranker_state') AS value) kv;
SELECT expect(bool_and(s > 0 AND s < 1), 'scores in (0, 1)') FROM served;
-- Each rerank_score is a request of the reranker's in the server's queue (a new server: these are its only ones),
-- computed in a batch of its own (one session, one call at a time).
SELECT expect(info_value('server_info', 'rerank_requests') = '5' AND info_value('server_info', 'rerank_texts') = '5'
              AND info_value('server_info', 'reranker_batches') = '5',
              format('rerank requests %s, texts %s, reranker batches %s', info_value('server_info', 'rerank_requests'),
                     info_value('server_info', 'rerank_texts'), info_value('server_info', 'reranker_batches')));

-- The same scores from a copy of the reranker, which this backend loads itself (another path than the server's).
SELECT set_config('qwen_embed.reranker_path', :'model_dir' || '/tiny-qwen3-reranker-copy', false);
SELECT expect(max(abs(s - rerank_score(q, d, instruct))) < 1e-6, 'server and backend scores differ')
FROM served JOIN pairs USING (id);
SELECT expect(value ~ 'tiny-qwen3-reranker-copy$', 'backend reranker ' || value)
FROM (SELECT info_value('info', 'reranker_path') AS value) kv;
RESET qwen_embed.reranker_path;

-- rerank() = rerank_score() per document, best first, NULLs skipped, idx = position in the array.
SELECT expect(array_agg(idx ORDER BY idx) = ARRAY[1, 3, 4], 'idx ' || array_agg(idx)::text)
FROM rerank('What is the capital of China?', ARRAY['Gravity.', NULL, 'Beijing is the capital.', 'Pizza']);
SELECT expect(bool_and(abs(score - rerank_score('What is the capital of China?', d)) < 1e-6), 'rerank vs rerank_score')
FROM rerank('What is the capital of China?', ARRAY['Gravity.', 'Beijing is the capital.', 'Pizza']) r,
     LATERAL (SELECT (ARRAY['Gravity.', 'Beijing is the capital.', 'Pizza'])[r.idx] AS d) x;
SELECT expect(bool_and(ordered), 'rerank rows are not best first') FROM (
    SELECT score >= coalesce(lead(score) OVER (ORDER BY ordinality), 0) AS ordered
    FROM rerank('q', ARRAY['a', 'bb', 'ccc', 'dddd', 'eeeee']) WITH ORDINALITY) o;

-- Two-stage retrieval in one statement: top 50 by vector distance on an HNSW index, then the best 5 by the reranker.
CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector(64));
INSERT INTO docs SELECT i, format('Document %s is about %s.', i, (ARRAY['PostgreSQL indexes', 'vector search',
    'query planning', 'gravity', 'cooking pasta'])[1 + i % 5]) FROM generate_series(1, 200) i;
UPDATE docs SET embedding = e FROM unnest((SELECT array_agg(id ORDER BY id) FROM docs),
    (SELECT embed(array_agg(body ORDER BY id)) FROM docs)) u(uid, e) WHERE id = uid;
CREATE INDEX ON docs USING hnsw (embedding vector_cosine_ops);
CREATE TEMP TABLE best AS
SELECT c.ids[r.idx] AS id, r.score
FROM (SELECT array_agg(id) AS ids, array_agg(body) AS bodies
      FROM (SELECT id, body FROM docs
            ORDER BY embedding <=> embed('How does vector search work?',
                                          'Given a web search query, retrieve relevant passages that answer the query')
            LIMIT 50) top) c,
     rerank('How does vector search work?', c.bodies) r
ORDER BY r.score DESC LIMIT 5;
SELECT expect(count(*) = 5 AND count(DISTINCT id) = 5, 'two-stage retrieval returned ' || count(*) || ' rows') FROM best;
SELECT expect(bool_and(abs(b.score - rerank_score('How does vector search work?', d.body)) < 1e-6), 'two-stage scores')
FROM best b JOIN docs d USING (id);

-- Errors through the server keep their SQLSTATE: an over-long pair without truncation.
SET qwen_embed.max_length = 100;
SELECT expect_error($$SELECT rerank_score('q', repeat('long document ', 200))$$, '54000', 'exceeds max_length 100');
SET qwen_embed.truncate = on;
SELECT expect(rerank_score('q', repeat('long document ', 200)) BETWEEN 0 AND 1, 'truncated pair scored');

ALTER SYSTEM RESET qwen_embed.server_queue_limit;
SELECT pg_reload_conf();
