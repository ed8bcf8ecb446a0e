-- Who may choose the model, what a normal role can do, and that a new model_path loads a new model.
CREATE EXTENSION qwen_embed CASCADE;
DROP ROLE IF EXISTS qwen_reader;
CREATE ROLE qwen_reader;

SET ROLE qwen_reader;
DO $$
BEGIN
    SET qwen_embed.model_path = '/tmp';
    RAISE EXCEPTION 'a normal role changed model_path';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END $$;
DO $$
BEGIN
    SET qwen_embed.device = 'cpu';
    RAISE EXCEPTION 'a normal role changed device';
EXCEPTION WHEN insufficient_privilege THEN NULL;
END $$;
-- A normal role needs nothing but EXECUTE (granted to PUBLIC) to embed.
DO $$ BEGIN ASSERT vector_dims(embed('a normal role embeds')) = 64; END $$;
SET qwen_embed.max_length = 100;
RESET ROLE;

-- Changing model_path loads the other model (same weights here, different directory).
DO $$
DECLARE first_path text; second_path text;
BEGIN
    PERFORM embed('load the first');
    first_path := (SELECT value FROM (SELECT info_value('info', 'model_path') AS value) kv);
    EXECUTE format('SET qwen_embed.model_path = %L', first_path || '-copy');
    PERFORM embed('load the second');
    second_path := (SELECT value FROM (SELECT info_value('info', 'model_path') AS value) kv);
    ASSERT second_path = first_path || '-copy', format('%s then %s', first_path, second_path);
END $$;
DROP ROLE qwen_reader;

-- The async retry schedule docs/triggers.md gives: an item that failed `a` times is tried again after
-- 10 s · 2^(a − 1), at most an hour later, and is parked after qwen_embed.async_max_attempts failures, 5 unless set.
RESET ROLE;
SELECT expect(current_setting('qwen_embed.async_max_attempts') = '5',
    'async_max_attempts defaults to ' || current_setting('qwen_embed.async_max_attempts'));
SELECT expect(abs(extract(epoch FROM qwen_embed._async_retry_at(a) - clock_timestamp()) - seconds) < 0.5,
    format('after %s failures the next try is in %s, expected %s s', a,
        qwen_embed._async_retry_at(a) - clock_timestamp(), seconds))
FROM (VALUES (1, 10), (2, 20), (3, 40), (5, 160), (9, 2560), (10, 3600), (40, 3600)) v(a, seconds);
