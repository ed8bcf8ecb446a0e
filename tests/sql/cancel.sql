-- statement_timeout and pg_cancel_backend stop a long embedding within about a second, and the backend, with its
-- loaded model, goes on working.
CREATE EXTENSION qwen_embed CASCADE;
SELECT vector_dims(embed('load the model first'));

CREATE TEMP TABLE long_texts AS SELECT repeat('lorem ipsum dolor sit amet ' || g || ' ', 300) AS body
FROM generate_series(1, 3000) g;

-- Embeds every long text (several seconds of work) and returns how long it ran before it was canceled.
CREATE FUNCTION embed_until_canceled(deadline interval) RETURNS interval LANGUAGE plpgsql AS $$
DECLARE started timestamptz := clock_timestamp();
BEGIN
    PERFORM embed(array_agg(body)) FROM long_texts;
    RAISE EXCEPTION 'the embedding was not canceled';
EXCEPTION WHEN query_canceled THEN
    ASSERT clock_timestamp() - started < deadline, format('canceled after %s', clock_timestamp() - started);
    RETURN clock_timestamp() - started;
END $$;

SET statement_timeout = '200ms';
SELECT embed_until_canceled('1.2 seconds') > interval '0.2 seconds' AS timed_out_after_200ms;
RESET statement_timeout;
DO $$ BEGIN ASSERT abs(vector_norm(embed('still usable after a timeout')) - 1) < 1e-5; END $$;

-- pg_cancel_backend from another session: a background psql cancels us by application_name after 1 s.
SET application_name = 'qwen_embed_cancel_me';
\! (sleep 1; psql -X -q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'qwen_embed_cancel_me'" >/dev/null) &
SELECT embed_until_canceled('2.5 seconds') > interval '0.9 seconds' AS canceled_by_another_session;
DO $$ BEGIN ASSERT abs(vector_norm(embed('still usable after a cancel')) - 1) < 1e-5; END $$;
