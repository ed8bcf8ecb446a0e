-- qwen_embed examples, run by scripts/demo.sh (psql -e shows each statement).
-- With the bundled random-weight test model the numbers show the mechanics only; with the real
-- Qwen3-Embedding-0.6B weights the same statements give meaningful similarities.
CREATE EXTENSION IF NOT EXISTS qwen_embed CASCADE;

-- One vector (the test model has 64 dimensions; Qwen3-Embedding-0.6B has 1024).
SELECT vector_dims(embed('The capital of China is Beijing.')) AS dims,
       round(vector_norm(embed('The capital of China is Beijing.'))::numeric, 6) AS norm;

-- Sentence similarity, one-liners.
SELECT round(semantic_similarity('The cat sits on the mat.', 'A cat is sitting on a mat.')::numeric, 4) AS paraphrase,
       round(semantic_similarity('The cat sits on the mat.', 'The stock market fell.')::numeric, 4) AS unrelated;

-- Instruction-prefixed query against raw documents; Matryoshka: keep 32 dimensions.
SELECT round(cosine_sim(embed('What is the capital of China?',
                              'Given a web search query, retrieve relevant passages that answer the query'),
                        embed('The capital of China is Beijing.'))::numeric, 4) AS query_vs_doc,
       vector_dims(embed('short vector', dim => 32)) AS matryoshka_dims;

-- A document table kept embedded by triggers (batched per statement), an HNSW index and a top-3 question.
DROP TABLE IF EXISTS demo_docs;
CREATE TABLE demo_docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('demo_docs', 'body', 'embedding');
INSERT INTO demo_docs (body) VALUES
    ('PostgreSQL is an open-source relational database.'),
    ('pgvector adds vector similarity search to PostgreSQL.'),
    ('Qwen3-Embedding turns text into vectors for semantic search.'),
    ('Beijing is the capital of China.'),
    ('The Great Wall is visible from many places in northern China.');
CREATE INDEX ON demo_docs USING hnsw (embedding vector_cosine_ops);

SELECT id, body FROM demo_docs
ORDER BY embedding <=> embed('How do I search vectors in Postgres?',
                             'Given a web search query, retrieve relevant passages that answer the query')
LIMIT 3;

-- Two-stage retrieval: the 50 nearest by vector distance (HNSW), re-ordered by the reranker (qwen_embed.reranker_path),
-- the best 3 kept. (With random weights the order means nothing; with Qwen3-Reranker it is the precise one.)
SELECT c.ids[r.idx] AS id, round(r.score::numeric, 4) AS score, c.bodies[r.idx] AS body
FROM (SELECT array_agg(id) AS ids, array_agg(body) AS bodies
      FROM (SELECT id, body FROM demo_docs
            ORDER BY embedding <=> embed('How do I search vectors in Postgres?',
                                          'Given a web search query, retrieve relevant passages that answer the query')
            LIMIT 50) top) c,
     rerank('How do I search vectors in Postgres?', c.bodies) r
ORDER BY r.score DESC LIMIT 3;

-- Similarity threshold.
SELECT id, body FROM demo_docs WHERE cosine_sim(embedding, embed('Beijing is the capital of China.')) > 0.78;

-- A long document: chunks cut at sentence ends, each embedded (one forward pass for all), and one document vector.
SELECT chunk_no, left(chunk, 50) || '…' AS chunk, token_count(chunk) AS tokens
FROM embed_chunks(repeat('PostgreSQL stores rows in heap pages. pgvector adds HNSW indexes. ', 12), 64, 8);
SELECT round(cosine_sim(embed_document(repeat('PostgreSQL stores rows in heap pages. ', 40), 64, 8, 'position'),
                        embed('PostgreSQL stores rows in heap pages.'))::numeric, 4) AS document_vs_sentence;

-- Vectors for rows that are already there: a resumable backfill, committing every batch.
DROP TABLE IF EXISTS demo_old_docs;
CREATE TABLE demo_old_docs (id bigint PRIMARY KEY, body text, embedding vector(64));
INSERT INTO demo_old_docs SELECT g, 'archived note number ' || g FROM generate_series(1, 500) g;
CALL qwen_embed.backfill('demo_old_docs', 'body', 'embedding', batch => 100);
SELECT relation, state, rows_done, rows_total, rows_per_s FROM qwen_embed.backfill_status;

-- What each backend did, and the cluster's model server (qwen_embed is preloaded: one model for every session).
SELECT process, pid, device, dtype, calls, texts, tokens, forward_passes, cache_hits, errors, total_ms, max_ms
FROM qwen_embed.stats;
SELECT key, value FROM qwen_embed.server_info()
WHERE key IN ('state', 'device', 'dtype', 'load_ms', 'requests', 'batches', 'mean_batch_texts', 'max_batch_texts',
              'queued_texts', 'restarts', 'reranker_state');
