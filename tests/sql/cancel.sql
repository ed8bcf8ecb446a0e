-- statement_timeout and pg_cancel_backend stop a long embedding within about a second, and the backend, with its
-- loaded model, goes on working.
CREATE EXTENSION qwen_embed CASCADE;
SELECT vector_dims(embed('load the model first'));
-- The server's counters are the cluster's running totals: this file checks what it adds to them.
CREATE TEMP TABLE baseline AS SELECT info_value('server_info', 'canceled')::int AS canceled,
    info_value('server_info', 'texts')::bigint AS texts;

CREATE TEMP TABLE long_texts AS SELECT repeat('lorem ipsum dolor sit amet ' || g || ' ', 300) AS body
FROM generate_series(1, 3000) g;

-- Embeds every long text (several seconds of work); returns how long it ran before it was canceled, or fails if the
-- cancel came later than the deadline or never.
CREATE FUNCTION embed_until_canceled(deadline interval) RETURNS interval LANGUAGE plpgsql AS $$
-- Timed from the statement's start, where statement_timeout's clock starts too.
DECLARE started timestamptz := statement_timestamp();
BEGIN
    PERFORM embed(array_agg(body)) FROM long_texts;
    RAISE EXCEPTION 'the embedding was not canceled';
EXCEPTION WHEN query_canceled THEN
    PERFORM expect(clock_timestamp() - started < deadline, format('canceled after %s', clock_timestamp() - started));
    RETURN clock_timestamp() - started;
END $$;

-- `stopped`: when the canceled statement's function had returned (the row is written right after).
CREATE TEMP TABLE results (cause text, after interval, stopped timestamptz DEFAULT clock_timestamp());
SET statement_timeout = '200ms';
INSERT INTO results SELECT 'statement_timeout 200ms', embed_until_canceled('1.2 seconds');
RESET statement_timeout;
SELECT expect(after >= interval '0.2 seconds', format('stopped after %s, before the timeout', after))
FROM results WHERE cause ~ 'timeout';
SELECT expect(abs(vector_norm(embed('still usable after a timeout')) - 1) < 1e-5, 'unusable after a timeout');

-- pg_cancel_backend from another session: a background psql waits until this session is inside the embedding, lets
-- it wait 0.3 s more, notes the time and cancels it (by application_name). The embedding must stop after the cancel
-- was sent, and within a second of it: the waiting session checks for interrupts every 10 ms, so a second is a
-- hundred checks, a margin that holds on a loaded 2-core machine. (Without the cancel it runs for tens of seconds and
-- fails with "not canceled".)
CREATE TABLE cancel_sent (at timestamptz);
SET application_name = 'qwen_embed_cancel_me';
\! (for i in $(seq 600); do [ "$(psql -X -At -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'qwen_embed_cancel_me' AND state = 'active' AND query ~ 'embed_until_canceled'")" = 1 ] && break; sleep 0.05; done; sleep 0.3; psql -X -q -c "INSERT INTO cancel_sent VALUES (clock_timestamp())" -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'qwen_embed_cancel_me'" >/dev/null) &
INSERT INTO results SELECT 'pg_cancel_backend', embed_until_canceled('60 seconds');
SELECT expect(count(*) = 1, count(*) || ' cancels sent') FROM cancel_sent;
SELECT expect(r.stopped > s.at AND r.stopped < s.at + interval '1 second',
              format('stopped %s after the cancel was sent', r.stopped - s.at))
FROM results r, cancel_sent s WHERE r.cause = 'pg_cancel_backend';
SELECT expect(abs(vector_norm(embed('still usable after a cancel')) - 1) < 1e-5, 'unusable after a cancel');
SELECT expect(count(*) = 2, count(*) || ' results') FROM results;

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM results LOOP
        RAISE NOTICE 'qwen_embed test: % stopped a 3,000-text embedding after %', r.cause, r.after;
    END LOOP;
END $$;

-- The model server dropped the two abandoned requests (their callers closed the connection) instead of finishing them.
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN info_value('server_info', 'canceled')::int - (SELECT canceled FROM baseline) >= 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT expect(value::int - canceled >= 2, value::int - canceled || ' requests dropped by the server')
FROM (SELECT info_value('server_info', 'canceled') AS value) kv, baseline;
-- Dropped, not finished: of the two abandoned 3,000-text requests the server computed what it had begun (a few
-- seconds' worth at most), nowhere near the 6,000 texts that finishing them would have computed.
SELECT expect(value::bigint - texts < 3000, format('the server computed %s texts for the two abandoned requests',
                                                   value::bigint - texts))
FROM (SELECT info_value('server_info', 'texts') AS value) kv, baseline;
