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

-- Similarity threshold.
SELECT id, body FROM demo_docs WHERE cosine_sim(embedding, embed('Beijing is the capital of China.')) > 0.78;

-- What this backend loaded and did.
SELECT * FROM qwen_embed.info();
