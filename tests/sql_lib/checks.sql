-- Run before every file in tests/sql (tests/run_sql_tests.sh): the checks those files use.
-- ASSERT is on whatever the server's plpgsql.check_asserts says; the tests switch it on and prove it works, so no
-- ASSERT in a test can pass by being skipped.
SET plpgsql.check_asserts = on;
DO $$
BEGIN
    BEGIN
        ASSERT false, 'probe';
    EXCEPTION WHEN assert_failure THEN
        RETURN;
    END;
    RAISE EXCEPTION 'ASSERT did not fire: the checks of this test could not fail';
END $$;

-- expect(ok, message): an ERROR unless ok is true (NULL fails too).
CREATE FUNCTION expect(ok boolean, message text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN IF ok IS NOT TRUE THEN RAISE EXCEPTION 'expectation failed: %', message; END IF; END $$;

-- expect_error(query, sqlstate, message fragment [, hint fragment]): the query fails with exactly that SQLSTATE, its
-- message contains the fragment and, when one is given, its HINT contains the hint fragment.
CREATE FUNCTION expect_error(query text, state text, fragment text, hint text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE got_state text; got_message text; got_hint text;
BEGIN
    EXECUTE query;
    RAISE EXCEPTION 'no error from: %', query;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS got_state = RETURNED_SQLSTATE, got_message = MESSAGE_TEXT, got_hint = PG_EXCEPTION_HINT;
    IF got_message LIKE 'no error from:%' THEN RAISE; END IF;
    PERFORM expect(got_state = state, format('%s: SQLSTATE %s (%s), expected %s', query, got_state, got_message, state));
    PERFORM expect(strpos(got_message, fragment) > 0, format('%s: message %L lacks %L', query, got_message, fragment));
    PERFORM expect(hint IS NULL OR strpos(got_hint, hint) > 0, format('%s: hint %L lacks %L', query, got_hint, hint));
END $$;

-- info_value(source, key): the value of one key of qwen_embed.info() or qwen_embed.server_info() (source 'info' or
-- 'server_info'); an ERROR unless exactly one row has that key, so that no check of it passes by finding no row.
CREATE FUNCTION info_value(source text, k text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE n int; v text;
BEGIN
    EXECUTE format('SELECT count(*), max(value) FROM qwen_embed.%I() WHERE key = $1', source) INTO n, v USING k;
    PERFORM expect(n = 1, format('qwen_embed.%s() has %s rows for key %s', source, n, k));
    RETURN v;
END $$;

-- wait_for_new_server(old_pid): waits (30 s at most) until a model server other than old_pid is ready, then fails
-- unless one is. A file that needs a fresh server (lifetime counters and maxima from zero, no reranker loaded) changes
-- a server setting with ALTER SYSTEM (which cannot run inside a function) and reloads; the supervisor then starts one.
CREATE FUNCTION wait_for_new_server(old_pid text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT value FROM qwen_embed.server_info() WHERE key = 'pid') <> old_pid
              AND (SELECT value FROM qwen_embed.server_info() WHERE key = 'state') = 'ready';
        PERFORM pg_sleep(0.1);
    END LOOP;
    PERFORM expect(info_value('server_info', 'pid') <> old_pid, 'the model server was not restarted');
    PERFORM expect(info_value('server_info', 'state') = 'ready', 'the new model server is not ready');
END $$;
