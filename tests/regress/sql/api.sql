-- The SQL surface's deterministic behaviour, as pg_regress output (tests/run_regress.sh): shapes, NULL conventions,
-- token counts, errors with their hints. The vectors' values are checked against transformers in the pg_tests.
-- Whichever file runs first creates the extension; none shows a NOTICE about it (the files run in any order).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS qwen_embed CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never

SELECT vector_dims(embed('The capital of China is Beijing.')) AS dims,
       round(vector_norm(embed('The capital of China is Beijing.'))::numeric, 5) AS norm;
SELECT embed(NULL) IS NULL AS null_in_null_out, round(vector_norm(embed(''))::numeric, 5) AS empty_text,
       round(vector_norm(embed(E'  \n\t '))::numeric, 5) AS whitespace;
SELECT cardinality(embed(ARRAY['a', NULL, 'b'])) AS n, (embed(ARRAY['a', NULL, 'b']))[2] IS NULL AS null_kept,
       cardinality(embed(ARRAY[]::text[])) AS empty;
SELECT vector_dims(embed('short', dim => 32)) AS matryoshka, round(vector_norm(embed('short', dim => 32))::numeric, 5);
SELECT token_count('The capital of China is Beijing.') AS plain,
       token_count('What is the capital of China?', 'Given a web search query, retrieve relevant passages') AS instructed,
       token_count('') AS empty;
-- transformers' reference vectors of these two texts have the cosine -0.018881 (tests/fixtures/tiny-qwen3-reference.json).
SELECT round(semantic_similarity('The capital of China is Beijing.',
                                 'Gravity is a force that attracts two bodies towards each other.')::numeric, 4) AS reference_pair;
SELECT round(cosine_sim('[1,0]'::vector, '[1,1]'::vector)::numeric, 6) AS cos45,
       cosine_sim('[0,0,0]'::vector, '[1,2,3]'::vector) AS zero_vector,
       round(cosine_sim(ARRAY[1, 0]::real[], ARRAY[0, 1]::real[])::numeric, 6) AS orthogonal;

-- Errors: message, hint and SQLSTATE (psql's :SQLSTATE after each).
SELECT embed('hello', dim => 8);
\echo SQLSTATE :SQLSTATE
SELECT cosine_sim('[1,2]'::vector, '[1,2,3]'::vector);
\echo SQLSTATE :SQLSTATE
SELECT cosine_sim(ARRAY[1, NULL]::real[], ARRAY[1, 2]::real[]);
\echo SQLSTATE :SQLSTATE
SET qwen_embed.max_length = 4;
SELECT embed('The capital of China is Beijing.');
\echo SQLSTATE :SQLSTATE
SET qwen_embed.truncate = on;
SELECT vector_dims(embed('The capital of China is Beijing.')) AS truncated_dims;
RESET qwen_embed.truncate;
RESET qwen_embed.max_length;
SELECT * FROM embed_chunks('text', 100, 60);
\echo SQLSTATE :SQLSTATE
SELECT embed_document('text', weighting => 'median');
\echo SQLSTATE :SQLSTATE

-- Long documents: chunk boundaries are deterministic (sentence ends within the token budget).
SELECT chunk_no, chunk, token_count(chunk) AS tokens
FROM embed_chunks('PostgreSQL stores rows in heap pages. pgvector adds HNSW indexes. '
                  || 'Qwen3 turns text into vectors. Triggers keep them fresh. Backfill fills old rows.', 16, 4);
SELECT string_agg(chunk, '' ORDER BY chunk_no) = repeat('One. Two. Three. Four. Five. Six. ', 4) AS chunks_concatenate,
       count(*) AS chunks
FROM embed_chunks(repeat('One. Two. Three. Four. Five. Six. ', 4), 16, 0);
