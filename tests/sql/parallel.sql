-- embed() in a query with a parallel plan. It is parallel restricted, so it runs in the leader, which is in parallel
-- mode until the query ends: nothing it does may need a transaction id. This file's first call must be that one (a
-- lookup done once per backend assigned a transaction id, and failed there: "cannot assign XIDs during a parallel
-- operation").
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE rows_to_scan AS SELECT g AS id, 'parallel row ' || g AS body FROM generate_series(1, 50000) g;
ANALYZE rows_to_scan;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
CREATE FUNCTION plan_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON, COSTS OFF) ' || query INTO plan;
    RETURN plan::text;
END $$;
SELECT expect(plan_of($$SELECT embed(array_agg(body)) FROM rows_to_scan WHERE id % 500 = 0$$) LIKE '%Gather%',
              'the plan is not parallel');
SELECT expect(cardinality(embed(array_agg(body))) = 100, 'embed(text[]) over a parallel scan')
FROM rows_to_scan WHERE id % 500 = 0;
SELECT expect(count(*) = 50 AND min(vector_dims(v)) = 64, 'embed(text) over a parallel scan')
FROM (SELECT embed(body) AS v FROM rows_to_scan WHERE id % 1000 = 0) s;
SELECT expect(plan_of($$SELECT embed(body) FROM rows_to_scan WHERE id % 1000 = 0$$) LIKE '%Gather%',
              'the second plan is not parallel');
