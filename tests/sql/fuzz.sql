-- 10,000 generated inputs through embed: random Unicode (surrogates excluded: PostgreSQL text cannot hold them),
-- control characters, RTL text with direction overrides, emoji ZWJ sequences, flags and skin tones, stacked combining
-- marks, odd whitespace, the model's special-token strings, SQL-looking text, long mixtures; plus 100,000-character
-- strings. Every result must be a finite unit vector, or ERROR 54000 (too long) naming the token count.
CREATE EXTENSION qwen_embed CASCADE;
SET qwen_embed.max_length = 4096; -- the test model's max_position_embeddings
SELECT setseed(0.25);

-- n random characters from [lo, hi].
CREATE FUNCTION random_chars(n int, lo int, hi int) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(string_agg(chr(CASE WHEN c BETWEEN 55296 AND 57343 THEN 65533 ELSE c END), ''), '')
    FROM (SELECT lo + floor(random() * (hi - lo + 1))::int AS c FROM generate_series(1, n)) s
$$;
CREATE FUNCTION pick(options text[]) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT options[1 + floor(random() * cardinality(options))::int]
$$;

CREATE TABLE fuzz AS
SELECT i, CASE i % 10
    WHEN 0 THEN random_chars(1 + (random() * 80)::int, 1, 1114111)
    WHEN 1 THEN random_chars(1 + (random() * 40)::int, 1, 31) || random_chars(3, 127, 159)
    WHEN 2 THEN chr(8238) || random_chars(5 + (random() * 40)::int, 1424, 1791) || chr(8237) || ' 123 '
                || random_chars(10, 1488, 1514) || chr(8207)
    WHEN 3 THEN (SELECT string_agg(chr(127744 + (random() * 1000)::int) || pick(ARRAY['', chr(8205), chr(65039),
                        chr(127995 + (random() * 4)::int), chr(127462 + (random() * 25)::int)]), '')
                 FROM generate_series(1, 1 + (random() * 30)::int) WHERE i > 0)
    WHEN 4 THEN pick(ARRAY['''; DROP TABLE fuzz; --', '$$ SELECT pg_sleep(100) $$', 'SELECT * FROM pg_authid',
                           E'\\x00\\\\', 'Robert''); DROP TABLE students;--', '%s%s%s%n', '{{7*7}}', '../../etc/passwd',
                           E'1\'\" OR 1=1 --']) || i
    WHEN 5 THEN random_chars(1, 65, 90) || random_chars(1 + (random() * 200)::int, 768, 879)
    WHEN 6 THEN pick(ARRAY['', ' ', E'\t\n\r', chr(160) || chr(8203) || chr(12288), repeat(' ', 5000),
                           chr(65279), E'\n\n\n'])
    WHEN 7 THEN pick(ARRAY['<|endoftext|>', '<|im_start|>user', '<|im_end|>', 'Instruct: x\nQuery:',
                           '<|endoftext|><|endoftext|>', '<think></think>']) || random_chars(5, 32, 126)
    WHEN 8 THEN random_chars(5 + (random() * 100)::int, 19968, 40959) || ' mixed ' || random_chars(20, 1024, 1279)
    ELSE (SELECT string_agg(pick(ARRAY[random_chars(20, 32, 126), random_chars(10, 1, 1114111),
                                       random_chars(10, 19968, 40959), 'word ']), '')
          FROM generate_series(1, 1 + (random() * 100)::int) WHERE i > 0)
END AS t
FROM generate_series(1, 10000) i;
INSERT INTO fuzz SELECT 10000 + i, repeat(random_chars(100, 1, 1114111), 1000) FROM generate_series(1, 10) i;
INSERT INTO fuzz SELECT 10010 + i, repeat('a', 100000) FROM generate_series(1, 5) i;
INSERT INTO fuzz SELECT 10015 + i, repeat(E'\u00e9\u0301 ', 33334) FROM generate_series(1, 5) i;

-- One at a time: a unit vector, or "too long" (54000). Any other ERROR fails the test.
CREATE TABLE singles (i int PRIMARY KEY, v vector);
DO $$
DECLARE
    r record;
    v vector;
    ok int := 0;
    too_long int := 0;
    message text;
BEGIN
    FOR r IN SELECT i, t FROM fuzz ORDER BY i LOOP
        BEGIN
            v := embed(r.t);
            IF v IS NULL OR vector_dims(v) <> 64 OR NOT abs(vector_norm(v) - 1) < 1e-4 THEN
                RAISE EXCEPTION 'input % gave a bad vector: %', r.i, v;
            END IF;
            INSERT INTO singles VALUES (r.i, v);
            ok := ok + 1;
        EXCEPTION WHEN program_limit_exceeded THEN
            GET STACKED DIAGNOSTICS message = MESSAGE_TEXT;
            ASSERT message ~ '^qwen_embed: input is \d+ tokens long, which exceeds max_length 4096$', message;
            too_long := too_long + 1;
        END;
    END LOOP;
    ASSERT ok + too_long = 10020, format('%s + %s', ok, too_long);
    ASSERT (SELECT count(*) FROM singles) = ok;
    ASSERT too_long >= 20, format('only %s inputs were too long', too_long);
    RAISE NOTICE 'qwen_embed test: fuzz: % inputs, % unit vectors, % too long (ERROR 54000), no other outcome',
        ok + too_long, ok, too_long;
END $$;

-- The same inputs in one batched call (those that fit): one vector per input, in order, each equal to the one-at-a-time
-- vector; and the long ones truncated.
DO $$
DECLARE
    ids int[];
    vs vector[];
    worst float8;
BEGIN
    SELECT array_agg(i ORDER BY i), embed(array_agg(t ORDER BY i)) INTO ids, vs
    FROM fuzz WHERE i IN (SELECT i FROM singles);
    ASSERT cardinality(vs) = (SELECT count(*) FROM singles), format('%s vectors for %s inputs', cardinality(vs),
        (SELECT count(*) FROM singles));
    SELECT max(1 - cosine_sim(b.v, s.v)) INTO worst
    FROM unnest(ids, vs) AS b(i, v) LEFT JOIN singles s USING (i);
    ASSERT worst < 1e-5, format('a batched vector differs from its one-at-a-time vector by %s', worst);
    ASSERT NOT EXISTS (SELECT FROM unnest(vs) v WHERE v IS NULL), 'batched: a NULL vector';
    RAISE NOTICE 'qwen_embed test: fuzz: % inputs batched, every vector within % of its one-at-a-time vector',
        cardinality(vs), worst;
    SET LOCAL qwen_embed.truncate = on;
    ASSERT (SELECT count(*) FILTER (WHERE abs(vector_norm(embed(t)) - 1) < 1e-4) FROM fuzz WHERE i > 10000) = 20,
        'truncated: not 20 unit vectors';
END $$;
