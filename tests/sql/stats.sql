-- qwen_embed.stats across backends (the SQL tests run with qwen_embed in shared_preload_libraries): another
-- session's work shows up under its pid, and its row goes when it disconnects.
CREATE EXTENSION qwen_embed CASCADE;
CREATE EXTENSION dblink;
SELECT expect(current_setting('shared_preload_libraries') ~ 'qwen_embed', 'qwen_embed is not preloaded');

-- The model server's row counts its requests and batches since it started: this file's two calls add to them.
CREATE TEMP TABLE server_before AS
SELECT calls, forward_passes FROM qwen_embed.stats WHERE process = 'model server';
SELECT dblink_connect('other', 'dbname=qwen_embed_test');
CREATE TEMP TABLE other AS SELECT pid FROM dblink('other', 'SELECT pg_backend_pid()') AS t(pid int);
SELECT * FROM dblink('other', $$SELECT cardinality(embed(ARRAY['one', 'two', 'three']))$$) AS t(n int);
SELECT * FROM dblink('other', $$SELECT token_count('four')$$) AS t(n int);

SELECT expect(s.texts = 3 AND s.calls = 1 AND s.forward_passes = 1 AND s.device = 'cpu' AND s.model ~ 'tiny-qwen3$'
             AND s.last_call > now() - interval '1 minute',
             format('other backend: %s', row_to_json(s)))
FROM qwen_embed.stats s JOIN other USING (pid);
SELECT expect(NOT EXISTS (SELECT FROM qwen_embed.stats WHERE pid = pg_backend_pid()), 'this backend has done nothing yet');

SELECT vector_dims(embed('this backend now'));
-- This backend's row and the other's (a backend of an earlier file may still be exiting: not counted here).
SELECT expect(count(*) = 2, count(*) || ' of the two backends in qwen_embed.stats')
FROM qwen_embed.stats WHERE process = 'backend' AND pid IN (pg_backend_pid(), (SELECT pid FROM other));
SELECT expect(count(*) = 1, count(*) || ' model server rows') FROM qwen_embed.stats WHERE process = 'model server';
-- The other backend's embed() of three texts and token_count(), and this one's embed(): three requests, two batches
-- (token_count runs no model; no other database works meanwhile: the SQL tests run one file at a time).
SELECT expect(s.calls - b.calls = 3 AND s.forward_passes - b.forward_passes = 2,
              format('the model server row went from %s calls, %s passes to %s, %s', b.calls, b.forward_passes,
                     s.calls, s.forward_passes))
FROM qwen_embed.stats s, server_before b WHERE s.process = 'model server';

-- The other backend's slot is freed when it exits.
SELECT dblink_disconnect('other');
DO $$
BEGIN
    FOR i IN 1..50 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM qwen_embed.stats JOIN other USING (pid));
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT expect(NOT EXISTS (SELECT FROM qwen_embed.stats JOIN other USING (pid)), 'the exited backend is still listed');
