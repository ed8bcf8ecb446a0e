-- The reranker's SQL surface as pg_regress output: scores of the bundled tiny reranker (random weights: the values are
-- the transformers reference's, see tests/fixtures/tiny-qwen3-reranker-reference.json), order, NULL conventions,
-- errors with their hints.
-- Whichever file runs first creates the extension; none shows a NOTICE about it (the files run in any order).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS qwen_embed CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never
\set VERBOSITY default

SELECT round(rerank_score('What is the capital of China?', 'The capital of China is Beijing.')::numeric, 4) AS score,
       round(rerank_score('Explain gravity', 'The capital of China is Beijing.',
                          'Judge whether the passage is about physics')::numeric, 4) AS instructed;
SELECT idx, round(score::numeric, 4) AS score
FROM rerank('What is the capital of China?',
            ARRAY['Gravity pulls bodies together.', NULL, 'The capital of China is Beijing.', '北京', '']);
SELECT rerank_score(NULL, 'document') IS NULL AS null_query, rerank_score('query', NULL) IS NULL AS null_document;
SELECT count(*) AS no_rows FROM rerank(NULL, ARRAY['a']);
SELECT count(*) AS no_rows FROM rerank('q', ARRAY[NULL, NULL]::text[]);

-- Errors: a pair over the length limit (truncation cuts the document, never the prompt around it), no reranker.
SET qwen_embed.max_length = 60;
SELECT rerank_score('q', repeat('long document ', 50));
SET qwen_embed.truncate = on;
SELECT round(rerank_score('q', repeat('long document ', 50))::numeric, 4) AS truncated;
SET qwen_embed.max_length = 30;
SELECT rerank_score('q', 'd');
RESET qwen_embed.truncate;
RESET qwen_embed.max_length;
SET qwen_embed.reranker_path = '';
SELECT rerank_score('q', 'd');
