-- Bad input and model faults are ERRORs with a SQLSTATE and a hint; the session stays usable and recovers
-- without reconnecting once the fault is fixed.
CREATE EXTENSION qwen_embed CASCADE;

CREATE FUNCTION expect_error(query text, state text, fragment text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE got_state text; got_message text; got_hint text;
BEGIN
    EXECUTE query;
    RAISE EXCEPTION 'no error from: %', query;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS got_state = RETURNED_SQLSTATE, got_message = MESSAGE_TEXT, got_hint = PG_EXCEPTION_HINT;
    IF got_message LIKE 'no error from:%' THEN RAISE; END IF;
    ASSERT got_state = state, format('%s: SQLSTATE %s (%s), expected %s', query, got_state, got_message, state);
    ASSERT strpos(got_message, fragment) > 0, format('%s: message %L lacks %L', query, got_message, fragment);
END $$;

SELECT expect_error($q$SELECT embed('hello', dim => 8)$q$, '22023', 'dim must be between 32 and 64, got 8');
SELECT expect_error($q$SELECT cosine_sim('[1,2]'::vector, '[1,2,3]'::vector)$q$, '22000', 'different vector dimensions');
SELECT expect_error($q$SELECT cosine_sim(ARRAY[1,NULL]::real[], ARRAY[1,2]::real[])$q$, '22004', 'NULLs');
SET qwen_embed.max_length = 4;
SELECT expect_error($q$SELECT embed('The capital of China is Beijing.')$q$, '54000', 'input is 8 tokens long, which exceeds max_length 4');
SET qwen_embed.truncate = on;
DO $$ BEGIN ASSERT vector_dims(embed('The capital of China is Beijing.')) = 64; END $$;
RESET qwen_embed.truncate;
RESET qwen_embed.max_length;

-- NULL conventions and edge inputs.
DO $$ BEGIN
    ASSERT embed(NULL) IS NULL;
    ASSERT abs(vector_norm(embed('')) - 1) < 1e-5, 'empty text embeds (just <|endoftext|>)';
    ASSERT abs(vector_norm(embed(E'  \n\t ')) - 1) < 1e-5, 'whitespace embeds';
    ASSERT cardinality(embed(ARRAY[]::text[])) = 0;
    ASSERT (embed(ARRAY['a', NULL]))[2] IS NULL;
    ASSERT cosine_sim('[0,0,0]'::vector, '[1,2,3]'::vector) = 0, 'zero vector similarity is 0';
END $$;

-- Model faults, then recovery in the same session.
SET qwen_embed.model_path = '/nonexistent/model';
SELECT expect_error($q$SELECT embed('x')$q$, '58P01', 'does not exist');
SET qwen_embed.model_path = '/etc/hostname';
SELECT expect_error($q$SELECT embed('x')$q$, '58P01', 'is not a directory');
SET qwen_embed.model_path = '/etc';
SELECT expect_error($q$SELECT embed('x')$q$, '58P01', 'has no config.json');
SET qwen_embed.device = 'tpu';
SELECT expect_error($q$SELECT embed('x')$q$, '22023', 'invalid qwen_embed.device');
RESET qwen_embed.device;
RESET qwen_embed.model_path;
DO $$ BEGIN ASSERT abs(vector_norm(embed('works again')) - 1) < 1e-5; END $$;
DO $$ BEGIN ASSERT (SELECT value::int FROM qwen_embed.info() WHERE key = 'errors') >= 1; END $$;
