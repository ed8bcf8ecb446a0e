//! PostgreSQL-level tests (`cargo pgrx test`): a real server with pgvector and the bundled tiny model.

#[cfg(test)]
use std::path::PathBuf;

/// The bundled test model, copied where the (unprivileged) test server can read it (by the test harness, hence
/// cfg(test): the extension library built for the server does not need it). The pg_tests run on several threads of
/// one process and each asks for the server's settings, so the copy is made once per process; files are replaced by
/// rename (never rewritten in place) because a server of an earlier run may still be reading them; symbolic links
/// are copied as the files they point to.
#[cfg(test)]
pub fn readable_test_model() -> PathBuf {
    static COPIED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPIED.get_or_init(|| readable_fixture("tiny-qwen3", "qwen_embed-test-model")).clone()
}

/// The bundled tiny reranker, copied likewise.
#[cfg(test)]
pub fn readable_test_reranker() -> PathBuf {
    static COPIED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPIED.get_or_init(|| readable_fixture("tiny-qwen3-reranker", "qwen_embed-test-reranker")).clone()
}

#[cfg(test)]
fn readable_fixture(name: &str, copy: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let dst = std::env::temp_dir().join(copy);
    copy_readable(&src, &dst);
    dst
}

#[cfg(test)]
fn copy_readable(src: &std::path::Path, dst: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dst).expect("create test model dir");
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755)).expect("chmod test model dir");
    for entry in std::fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("fixture entry");
        let target = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_readable(&entry.path(), &target);
        } else if std::fs::read(&target).ok() != Some(std::fs::read(entry.path()).expect("read fixture")) {
            let partial = dst.join(format!(".{}.{}", entry.file_name().to_string_lossy(), std::process::id()));
            std::fs::copy(entry.path(), &partial).expect("copy fixture");
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).expect("chmod fixture");
            std::fs::rename(&partial, &target).expect("rename fixture");
        }
    }
}

/// Says SKIPPED in the test command's output where the bf16 pg_test below cannot check bf16 (it runs inside the
/// server, whose output the test command shows only when a test fails).
#[cfg(test)]
#[test]
fn bf16_pg_test_has_a_bf16_kernel_here() {
    if qwen_embed_model::precision::bf16_kernel().is_none() {
        println!("SKIPPED bf16_stays_close_to_the_reference (pg_test): no bf16 kernel on this CPU");
    }
}

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use serde_json::Value;

    /// Reference vectors from transformers (tools/make_fixtures.py), built into the test library.
    const REFERENCE: &str = include_str!("../tests/fixtures/tiny-qwen3-reference.json");

    fn cases() -> Vec<Value> {
        let json: Value = serde_json::from_str(REFERENCE).unwrap();
        json["cases"].as_array().unwrap().clone()
    }

    fn floats(v: &Value) -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    }

    fn sql_literal(s: &str) -> String {
        pgrx::spi::quote_literal(s)
    }

    fn vector_sql(query: &str) -> Vec<f32> {
        Spi::get_one::<Vec<f32>>(&format!("SELECT ({query})::real[]")).unwrap().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// One row of `qwen_embed.info()`.
    fn info_value(key: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT value FROM qwen_embed.info() WHERE key = $1", &[key.into()])
            .unwrap()
            .unwrap()
    }

    fn counter(key: &str) -> i64 {
        info_value(key).parse().unwrap()
    }

    fn float(query: &str) -> f64 {
        Spi::get_one::<f64>(query).unwrap().unwrap()
    }

    #[pg_test]
    fn embed_matches_the_transformers_reference() {
        for case in cases() {
            let instruct = match case["instruct"].as_str() {
                Some(i) => sql_literal(i),
                None => "NULL".into(),
            };
            let got = vector_sql(&format!("embed({}, {instruct})", sql_literal(case["text"].as_str().unwrap())));
            let diff = max_diff(&got, &floats(&case["embedding"]));
            assert!(diff <= 1e-4, "{}: {diff}", case["input"]);
        }
    }

    #[pg_test]
    fn embed_returns_a_native_unit_vector_and_null_for_null() {
        assert_eq!(Spi::get_one::<String>("SELECT pg_typeof(embed('x'))::text").unwrap().unwrap(), "vector");
        assert_eq!(Spi::get_one::<i32>("SELECT vector_dims(embed('hello world'))").unwrap().unwrap(), 64);
        assert!((float("SELECT vector_norm(embed('hello world'))") - 1.0).abs() < 1e-5);
        assert!(Spi::get_one::<bool>("SELECT embed(NULL) IS NULL").unwrap().unwrap());
        assert!(Spi::get_one::<bool>("SELECT embed(NULL::text[]) IS NULL").unwrap().unwrap());
        assert_eq!(Spi::get_one::<i32>("SELECT vector_dims(embed('hello', dim => 32))").unwrap().unwrap(), 32);
        assert!((float("SELECT vector_norm(embed('hello', NULL, 48))") - 1.0).abs() < 1e-5);
    }

    #[pg_test(error = "qwen_embed: dim must be between 32 and 64, got 16")]
    fn bad_dim_is_an_error() {
        Spi::run("SELECT embed('hello', dim => 16)").unwrap();
    }

    #[pg_test]
    fn a_batch_equals_single_calls_in_order_with_nulls_kept() {
        let texts = ["first text", "a much longer second text with more words in it", "三"];
        let array =
            format!("ARRAY[{}, NULL, {}, {}]", sql_literal(texts[0]), sql_literal(texts[1]), sql_literal(texts[2]));
        let n = Spi::get_one::<i32>(&format!("SELECT cardinality(embed({array}, 'Retrieve text'))")).unwrap().unwrap();
        assert_eq!(n, 4);
        assert!(Spi::get_one::<bool>(&format!("SELECT (embed({array}))[2] IS NULL")).unwrap().unwrap());
        for (i, text) in [(1, texts[0]), (3, texts[1]), (4, texts[2])] {
            let batched = vector_sql(&format!("(embed({array}, 'Retrieve text'))[{i}]"));
            let single = vector_sql(&format!("embed({}, 'Retrieve text')", sql_literal(text)));
            assert!(max_diff(&batched, &single) <= 1e-5, "element {i}");
        }
        let before = counter("forward_passes");
        Spi::run("SELECT embed(array_agg('row number ' || g)) FROM generate_series(1, 200) g").unwrap();
        assert_eq!(counter("forward_passes") - before, 1, "200 short texts fit one pass");
    }

    #[pg_test]
    fn cosine_sim_on_vectors_and_arrays() {
        assert!((float("SELECT cosine_sim('[1,0]'::vector, '[1,0]'::vector)") - 1.0).abs() < 1e-12);
        assert!(float("SELECT cosine_sim('[1,0]'::vector, '[0,2]'::vector)").abs() < 1e-12);
        assert!((float("SELECT cosine_sim(ARRAY[1,2]::real[], ARRAY[-1,-2]::real[])") + 1.0).abs() < 1e-12);
        assert_eq!(float("SELECT cosine_sim('[0,0]'::vector, '[1,2]'::vector)"), 0.0, "zero vector: 0");
        let via_pgvector = float("SELECT 1 - (embed('a cat') <=> embed('a dog'))");
        let ours = float("SELECT cosine_sim(embed('a cat'), embed('a dog'))");
        assert!((via_pgvector - ours).abs() < 1e-6);
        assert!(Spi::get_one::<bool>("SELECT cosine_sim(NULL::vector, '[1]') IS NULL").unwrap().unwrap());
    }

    #[pg_test(error = "different vector dimensions 2 and 3")]
    fn cosine_sim_of_different_dimensions_is_an_error() {
        Spi::run("SELECT cosine_sim('[1,2]'::vector, '[1,2,3]'::vector)").unwrap();
    }

    #[pg_test]
    fn semantic_similarity_treats_a_as_the_query() {
        let direct = float("SELECT cosine_sim(embed('what is rust', 'Find docs'), embed('Rust is a language'))");
        let one_liner = float("SELECT semantic_similarity('what is rust', 'Rust is a language', 'Find docs')");
        assert!((direct - one_liner).abs() < 1e-6);
        // Against transformers: the cosine of the reference vectors of an instructed query and a document.
        let (query, doc) = (&cases()[1], &cases()[0]);
        let got = float(&format!(
            "SELECT semantic_similarity({}, {}, {})",
            sql_literal(query["text"].as_str().unwrap()),
            sql_literal(doc["text"].as_str().unwrap()),
            sql_literal(query["instruct"].as_str().unwrap())
        ));
        let want = reference_cosine(query, doc);
        assert!((got - want).abs() < 1e-4, "semantic_similarity {got}, transformers {want}");
    }

    /// The cosine of two cases' reference vectors.
    fn reference_cosine(a: &Value, b: &Value) -> f64 {
        let (a, b) = (floats(&a["embedding"]), floats(&b["embedding"]));
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>();
        dot(&a, &b) / (dot(&a, &a) * dot(&b, &b)).sqrt()
    }

    #[pg_test]
    fn token_count_and_length_limits() {
        assert_eq!(Spi::get_one::<i32>("SELECT token_count('The capital of China is Beijing.')").unwrap().unwrap(), 8);
        Spi::run("SET qwen_embed.max_length = 5; SET qwen_embed.truncate = on").unwrap();
        let truncated = vector_sql("embed('The capital of China is Beijing.')");
        let prefix = vector_sql("embed('The capital of China')"); // 4 tokens + <|endoftext|>
        assert!(max_diff(&truncated, &prefix) <= 1e-6);
    }

    #[pg_test(error = "qwen_embed: input is 8 tokens long, which exceeds max_length 5")]
    fn too_long_input_is_an_error_by_default() {
        Spi::run("SET qwen_embed.max_length = 5").unwrap();
        Spi::run("SELECT embed('The capital of China is Beijing.')").unwrap();
    }

    /// The per-row form runs the model once per query by itself: with the result cache off, and for a question too
    /// long to be cached.
    #[pg_test]
    fn a_constant_query_in_order_by_is_embedded_once_without_the_cache() {
        Spi::run(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector(64));
             INSERT INTO docs SELECT g, 'document ' || g, embed('document ' || g) FROM generate_series(1, 500) g;
             SET qwen_embed.cache_size = 0;",
        )
        .unwrap();
        for question in ["'which document is number 42?'", "repeat('a long question about documents ', 200)"] {
            let before = counter("forward_passes");
            let top = Spi::get_one::<i32>(&format!(
                "SELECT id FROM docs ORDER BY cosine_sim(embedding, embed({question})) DESC LIMIT 1"
            ))
            .unwrap();
            assert!(top.is_some());
            assert_eq!(counter("forward_passes") - before, 1, "one forward pass for 500 rows: {question}");
        }
        // A per-row argument is embedded per row, each time with its own text.
        let before = counter("texts");
        let worst = float("SELECT max(1 - cosine_sim(embedding, embed(body))) FROM docs WHERE id <= 20");
        assert!(worst < 1e-5, "per-row embed(body) differs from the stored vector by {worst}");
        assert_eq!(counter("texts") - before, 20);
    }

    /// The planner evaluates `embed(ARRAY[...])` once to estimate unnest's rows, then execution calls it: the model
    /// runs once for both, and a different array in the same statement is computed.
    #[pg_test]
    fn an_array_under_unnest_is_embedded_once_per_statement() {
        Spi::run("SET qwen_embed.cache_size = 0").unwrap();
        let before = counter("texts");
        let count = "SELECT count(*) FROM unnest(embed(ARRAY['one text', 'another text', 'a third']))";
        assert_eq!(Spi::get_one::<i64>(count).unwrap(), Some(3));
        assert_eq!(counter("texts") - before, 3, "planning and execution share one computation");
        let other = "SELECT count(*) FROM unnest(embed(ARRAY['one text', 'another text', 'a fourth']))";
        assert_eq!(Spi::get_one::<i64>(other).unwrap(), Some(3));
        assert_eq!(counter("texts") - before, 6, "another array is computed");
    }

    /// Remembered results (the per-backend cache and the per-call-site memory) depend on the length settings too: a
    /// result made under other limits is never served.
    #[pg_test]
    fn remembered_results_follow_the_length_settings() {
        let text = sql_literal("The capital of China is Beijing, and it is a large city.");
        Spi::run("SET qwen_embed.truncate = on; SET qwen_embed.max_length = 4").unwrap();
        let truncated = vector_sql(&format!("embed({text})"));
        Spi::run("RESET qwen_embed.truncate; RESET qwen_embed.max_length").unwrap();
        let full = vector_sql(&format!("embed({text})"));
        let batched = vector_sql(&format!("(embed(ARRAY[{text}]))[1]"));
        assert!(max_diff(&full, &batched) <= 1e-6, "the single-text path served the truncated vector");
        assert!(max_diff(&full, &truncated) > 1e-2, "the two settings should give different vectors");
    }

    #[pg_test(error = "qwen_embed: input is 15 tokens long, which exceeds max_length 4")]
    fn a_cached_result_is_not_served_past_a_lower_max_length() {
        Spi::run("SELECT embed('The capital of China is Beijing, and it is a large city.')").unwrap();
        Spi::run("SET qwen_embed.max_length = 4").unwrap();
        Spi::run("SELECT embed('The capital of China is Beijing, and it is a large city.')").unwrap();
    }

    #[pg_test]
    fn triggers_embed_inserts_in_batches_and_updates_of_the_text() {
        Spi::run(
            "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text, embedding vector(64));
             SELECT qwen_embed.create_embedding_triggers('notes', 'body', 'embedding');",
        )
        .unwrap();
        let before = counter("forward_passes");
        Spi::run("INSERT INTO notes (body) SELECT 'note number ' || g FROM generate_series(1, 1000) g").unwrap();
        let passes = counter("forward_passes") - before;
        assert!((1..=5).contains(&passes), "1000 rows took {passes} forward passes");
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM notes WHERE embedding IS NULL").unwrap().unwrap(), 0);
        let stored = vector_sql("SELECT embedding FROM notes WHERE body = 'note number 777'");
        assert!(max_diff(&stored, &vector_sql("embed('note number 777')")) <= 1e-5, "trigger path = direct call");

        Spi::run("UPDATE notes SET body = 'changed text' WHERE id = 5").unwrap();
        let updated = vector_sql("SELECT embedding FROM notes WHERE id = 5");
        assert!(max_diff(&updated, &vector_sql("embed('changed text')")) <= 1e-5);
        let before = counter("texts");
        Spi::run("UPDATE notes SET body = body WHERE id <= 10").unwrap();
        assert_eq!(counter("texts"), before, "unchanged text is not re-embedded");
        Spi::run("UPDATE notes SET body = NULL WHERE id = 6").unwrap();
        assert!(Spi::get_one::<bool>("SELECT embedding IS NULL FROM notes WHERE id = 6").unwrap().unwrap());
    }

    /// Rows whose stored vector is missing or differs from a fresh embed() of their text.
    fn stale_rows(table: &str) -> i64 {
        if !Spi::get_one::<bool>(&format!("SELECT to_regclass('{table}') IS NOT NULL")).unwrap().unwrap() {
            return 0;
        }
        Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM {table} WHERE body IS NOT NULL
               AND (embedding IS NULL OR 1 - cosine_sim(embedding, embed(body)) > 1e-5)"
        ))
        .unwrap()
        .unwrap()
    }

    /// Every statement form that changes a row's text leaves vector = embed(text), including those that change the
    /// key (the statement trigger cannot pair old and new rows by key; the row trigger sees each pair exactly).
    #[pg_test]
    fn every_statement_that_changes_text_leaves_fresh_vectors() {
        // MERGE came in PostgreSQL 15; before it, the same change as an upsert.
        const MERGE_OR_UPSERT: &str = if pg_sys::PG_VERSION_NUM >= 150000 {
            "MERGE INTO ku USING (VALUES (4, 'merged'), (8, 'new by merge')) AS src(id, body) ON ku.id = src.id
                 WHEN MATCHED THEN UPDATE SET body = src.body WHEN NOT MATCHED THEN INSERT (id, body) VALUES (src.id, src.body)"
        } else {
            "INSERT INTO ku (id, body) VALUES (4, 'merged'), (8, 'new by merge')
                 ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body"
        };
        Spi::run(
            "CREATE TABLE kt (id int PRIMARY KEY DEFERRABLE, body text, embedding vector(64));
             SELECT qwen_embed.create_embedding_triggers('kt', 'body', 'embedding');
             INSERT INTO kt (id, body) VALUES (1, 'first row'), (2, 'second row'), (3, 'third row');",
        )
        .unwrap();
        assert_eq!(stale_rows("kt"), 0, "INSERT");
        let statements = [
            "UPDATE kt SET id = id + 10, body = body || ' changed'",
            "UPDATE kt SET id = id - 9, body = body || ' shifted'", // 11,12,13 -> 2,3,4: keys shift onto each other
            "UPDATE kt SET id = 6 - id, body = body || ' swapped'", // 2 <-> 4 swap keys, 3 stays
            "UPDATE kt SET body = CASE id WHEN 2 THEN (SELECT body FROM kt WHERE id = 4)
                                          WHEN 4 THEN (SELECT body FROM kt WHERE id = 2) ELSE body END",
            "UPDATE kt SET id = 6 - id", // keys move, texts do not
            // ON CONFLICT needs a non-deferrable key: from here on, the same rows in such a table.
            "CREATE TABLE ku (id int PRIMARY KEY, body text, embedding vector(64));
             SELECT qwen_embed.create_embedding_triggers('ku', 'body', 'embedding');
             INSERT INTO ku SELECT id, body FROM kt",
            "INSERT INTO ku (id, body) VALUES (3, 'upserted'), (7, 'new by upsert')
                 ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
            MERGE_OR_UPSERT,
            "COPY ku (id, body) FROM PROGRAM 'printf \"9\\tcopied row\\n10\\tanother copied row\\n\"'",
            "UPDATE ku SET body = NULL WHERE id = 10",
            "UPDATE ku SET body = 'text again' WHERE id = 10",
            "UPDATE ku SET body = NULL WHERE id = 9",
        ];
        for statement in statements {
            Spi::run(statement).unwrap();
            assert_eq!(stale_rows("kt") + stale_rows("ku"), 0, "stale vectors after: {statement}");
        }
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM ku").unwrap(), Some(7));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM ku WHERE embedding IS NULL").unwrap(), Some(1));

        // A vector the statement sets itself is kept, on INSERT and on UPDATE (each checked before the next).
        Spi::run("INSERT INTO ku VALUES (20, 'given', embed('something else'))").unwrap();
        assert!(float("SELECT cosine_sim(embedding, embed('something else')) FROM ku WHERE id = 20") > 0.99999);
        assert!(float("SELECT cosine_sim(embedding, embed('given')) FROM ku WHERE id = 20") < 0.999);
        Spi::run("UPDATE ku SET body = 'given, changed', embedding = embed('another thing') WHERE id = 20").unwrap();
        assert!(float("SELECT cosine_sim(embedding, embed('another thing')) FROM ku WHERE id = 20") > 0.99999);
    }

    #[rustfmt::skip]
    #[pg_test(error = "qwen_embed_trigger: the UPDATE trigger on public.half needs the row trigger qwen_embed_clear_on_change('body', 'embedding')")]
    fn an_update_trigger_without_the_row_trigger_is_an_error() {
        Spi::run(
            "CREATE TABLE half (id int PRIMARY KEY, body text, embedding vector(64));
             CREATE TRIGGER t AFTER UPDATE ON half REFERENCING NEW TABLE AS n
                 FOR EACH STATEMENT EXECUTE FUNCTION qwen_embed_trigger('body', 'embedding');
             INSERT INTO half VALUES (1, 'x');
             UPDATE half SET body = 'y';",
        )
        .unwrap();
    }

    #[pg_test]
    fn trigger_with_an_instruction() {
        Spi::run(
            "CREATE TABLE queries (id int PRIMARY KEY, q text, emb vector);
             SELECT qwen_embed.create_embedding_triggers('queries', 'q', 'emb', 'Find answers');
             INSERT INTO queries VALUES (1, 'how tall is everest');",
        )
        .unwrap();
        let stored = vector_sql("SELECT emb FROM queries WHERE id = 1");
        assert!(max_diff(&stored, &vector_sql("embed('how tall is everest', 'Find answers')")) <= 1e-5);
    }

    #[pg_test(error = "qwen_embed: table public.nokey has no primary key")]
    fn triggers_need_a_primary_key() {
        Spi::run(
            "CREATE TABLE nokey (body text, emb vector);
             SELECT qwen_embed.create_embedding_triggers('nokey', 'body', 'emb');",
        )
        .unwrap();
    }

    #[pg_test(error = "qwen_embed_trigger: table public.nokey has no primary key")]
    fn a_trigger_made_by_hand_needs_a_primary_key() {
        Spi::run(
            "CREATE TABLE nokey (body text, emb vector);
             CREATE TRIGGER t AFTER INSERT ON nokey REFERENCING NEW TABLE AS n
                 FOR EACH STATEMENT EXECUTE FUNCTION qwen_embed_trigger('body', 'emb');
             INSERT INTO nokey VALUES ('x');",
        )
        .unwrap();
    }

    #[pg_test]
    fn hnsw_index_serves_the_distance_order_and_agrees_with_the_exact_scan() {
        Spi::run(
            "CREATE TABLE kb (id int PRIMARY KEY, body text, embedding vector(64));
             SELECT qwen_embed.create_embedding_triggers('kb', 'body', 'embedding');
             INSERT INTO kb SELECT g, 'fact ' || g || ': ' || md5(g::text) FROM generate_series(1, 500) g;
             CREATE INDEX ON kb USING hnsw (embedding vector_cosine_ops);
             ANALYZE kb;",
        )
        .unwrap();
        let query = "SELECT array_agg(id) FROM (SELECT id FROM kb ORDER BY embedding <=> \
                     embed('fact 7', 'Given a web search query, retrieve relevant passages that answer the query') LIMIT 3) t";
        let plan = Spi::get_one::<pgrx::Json>(&format!("EXPLAIN (FORMAT JSON) {query}")).unwrap().unwrap();
        let plan = plan.0.to_string();
        assert!(plan.contains("Index Scan") && plan.contains("kb_embedding_idx"), "{plan}");
        let indexed = Spi::get_one::<Vec<i32>>(query).unwrap().unwrap();
        Spi::run("SET enable_indexscan = off").unwrap();
        let exact = Spi::get_one::<Vec<i32>>(query).unwrap().unwrap();
        assert_eq!(indexed, exact);
    }

    #[pg_test]
    fn the_product_brief_workflow() {
        // Sentence similarity: paraphrases score above unrelated pairs... with a random-weight model that cannot
        // hold, so each pair's similarity is checked against the cosine of transformers' reference vectors.
        let cases = cases();
        for (a, b) in [(0, 3), (4, 6), (13, 14), (8, 16)] {
            let (a, b) = (&cases[a], &cases[b]);
            let text = |c: &Value| sql_literal(c["text"].as_str().unwrap());
            let got = float(&format!("SELECT semantic_similarity({}, {})", text(a), text(b)));
            let want = reference_cosine(a, b);
            assert!((got - want).abs() < 1e-4, "{} / {}: {got}, transformers {want}", a["input"], b["input"]);
        }
        // Threshold filter: the rows above a threshold are exactly those whose similarity is above it.
        Spi::run(
            "CREATE TABLE faq (id int PRIMARY KEY, answer text, emb vector);
             SELECT qwen_embed.create_embedding_triggers('faq', 'answer', 'emb');
             INSERT INTO faq SELECT g, 'answer ' || g FROM generate_series(1, 50) g;",
        )
        .unwrap();
        let above = Spi::get_one::<i64>("SELECT count(*) FROM faq WHERE cosine_sim(emb, embed('answer 3')) > 0.78")
            .unwrap()
            .unwrap();
        let exact = Spi::get_one::<i64>(
            "SELECT count(*) FROM (SELECT 1 - (emb <=> embed('answer 3')) AS s FROM faq) t WHERE s > 0.78",
        )
        .unwrap()
        .unwrap();
        assert_eq!(above, exact);
        assert!(above >= 1, "the row itself is above the threshold");
    }

    #[pg_test]
    fn info_reports_the_model_and_counters() {
        Spi::run("SELECT embed('load it')").unwrap();
        let get = info_value;
        assert_eq!(get("dims"), "64");
        assert_eq!(get("layers"), "3");
        assert_eq!(get("device"), "cpu");
        assert_eq!(get("dtype"), "f32");
        assert!(get("model_path").ends_with("qwen_embed-test-model"));
        assert!(counter("calls") >= 1 && counter("tokens") >= 1);
        // 151,669 × 64 bf16 embeddings (kept as stored) and 3 small f32 layers.
        assert!((18..=22).contains(&counter("weights_mb")), "{}", get("weights_mb"));
    }

    #[pg_test(error = "qwen_embed: model directory \"/nonexistent/model\" does not exist")]
    fn a_missing_model_directory_is_an_error() {
        Spi::run("SET qwen_embed.model_path = '/nonexistent/model'").unwrap();
        Spi::run("SELECT embed('x')").unwrap();
    }

    #[pg_test(error = "qwen_embed: qwen_embed.model_path is not set")]
    fn an_unset_model_path_is_an_error() {
        Spi::run("SET qwen_embed.model_path = ''").unwrap();
        Spi::run("SELECT embed('x')").unwrap();
    }

    #[pg_test(
        error = "qwen_embed: invalid qwen_embed.device: qwen_embed was built without CUDA support (cargo feature \"cuda\")"
    )]
    #[cfg(not(feature = "cuda"))]
    fn explicit_cuda_without_cuda_support_is_an_error() {
        Spi::run("SET qwen_embed.device = 'cuda'").unwrap();
        Spi::run("SELECT embed('x')").unwrap();
    }

    #[pg_test]
    fn a_panic_in_the_encoder_is_an_error_and_the_session_goes_on() {
        let caught = std::panic::catch_unwind(|| {
            crate::route::execute(|_| -> qwen_embed_model::Result<()> { panic!("forced panic") })
        });
        let payload = caught.expect_err("the panic must surface");
        let report = payload.downcast_ref::<pgrx::pg_sys::panic::ErrorReportWithLevel>().expect("an ERROR report");
        assert!(report.message().contains("internal error in the encoder: forced panic"), "{}", report.message());
        assert_eq!(report.sql_error_code(), pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR);
        assert!((float("SELECT vector_norm(embed('still works'))") - 1.0).abs() < 1e-5);
        assert!(counter("errors") >= 1);
    }

    #[pg_test]
    fn bf16_stays_close_to_the_reference_and_auto_picks_the_fastest_accurate_path() {
        let bf16 = qwen_embed_model::precision::bf16_kernel().is_some();
        Spi::run("SET qwen_embed.dtype = 'bf16'").unwrap();
        if !bf16 {
            // bf16 falls back to f32 here: comparing it would say nothing about bf16.
            eprintln!("SKIPPED bf16_stays_close_to_the_reference: no bf16 kernel on this CPU");
        }
        let case = &cases()[3];
        let expected = floats(&case["embedding"]);
        // Embeds the case under the session's dtype: its cosine with the reference, and the dtype info() reports.
        let embed_case = || {
            let got = vector_sql(&format!("embed({})", sql_literal(case["text"].as_str().unwrap())));
            (got.iter().zip(&expected).map(|(a, b)| a * b).sum::<f32>(), info_value("dtype"))
        };
        let (cos, dtype) = embed_case();
        // bf16 with bf16 attention: 0.9998 on this tiny model, 0.99999 on the real shape (tests/reference.rs says why).
        assert!(cos >= if bf16 { 0.9998 } else { 0.99999 }, "bf16 cosine {cos}");
        assert_eq!(dtype, if bf16 { "bf16" } else { "f32" });
        // auto: bf16 weights where the CPU has a bf16 kernel, else f32 where oneDNN has its AVX-512 f32 brgemm, else
        // f16 weights for the AVX2/FMA kernel, which every CPU this is tested on has; f16 weights are held to the f32
        // paths' accuracy.
        Spi::run("SET qwen_embed.dtype = 'auto'").unwrap();
        let (cos, dtype) = embed_case();
        assert!(cos >= if bf16 { 0.9998 } else { 0.99999 }, "auto cosine {cos}");
        let avx512_f32 = qwen_embed_model::precision::f32_brgemm().is_some();
        assert_eq!(
            dtype,
            if bf16 {
                "bf16"
            } else if avx512_f32 {
                "f32"
            } else {
                "f16"
            }
        );
        let kernel = qwen_embed_model::Precision::auto(&qwen_embed_model::Device::Cpu).kernel_name();
        assert_eq!(info_value("kernel"), kernel);
        // The oneDNN the build found (2.x on Debian 12, 3.x on Debian 13), loaded: its version as the library says it.
        let onednn = info_value("onednn");
        let numbers: Vec<&str> = onednn.split('.').collect();
        assert!(numbers.len() == 3 && numbers.iter().all(|n| n.parse::<u32>().is_ok()), "onednn {onednn}");
        assert!(matches!(numbers[0], "2" | "3"), "onednn {onednn}");
        assert_ne!(kernel, "candle", "every CPU this is tested on has AVX2/FMA at least");
    }

    /// Reranker scores from transformers (tools/make_reranker_fixtures.py).
    const RERANKER_REFERENCE: &str = include_str!("../tests/fixtures/tiny-qwen3-reranker-reference.json");

    /// The fixture cases; the server's configuration points qwen_embed.reranker_path at the tiny reranker.
    fn use_test_reranker() -> Vec<Value> {
        let json: Value = serde_json::from_str(RERANKER_REFERENCE).unwrap();
        json["cases"].as_array().unwrap().clone()
    }

    fn sql_or_null(v: &Value) -> String {
        v.as_str().map_or("NULL".into(), sql_literal)
    }

    #[pg_test]
    fn rerank_scores_match_the_transformers_reference() {
        let cases = use_test_reranker();
        for case in cases.iter().filter(|c| c["max_length"] == 8192) {
            let (q, d, i) = (
                sql_literal(case["query"].as_str().unwrap()),
                sql_literal(case["document"].as_str().unwrap()),
                sql_or_null(&case["instruct"]),
            );
            let got = float(&format!("SELECT rerank_score({q}, {d}, {i})"));
            let want = case["score"].as_f64().unwrap();
            assert!((got - want).abs() <= 1e-4, "{}: {got} vs {want}", case["query"]);
        }
        // Truncation keeps the prefix and suffix and cuts the pair, as the official code does.
        Spi::run("SET qwen_embed.truncate = on; SET qwen_embed.max_length = 160").unwrap();
        let case = cases.iter().find(|c| c["max_length"] == 160).unwrap();
        let (q, d) = (sql_literal(case["query"].as_str().unwrap()), sql_literal(case["document"].as_str().unwrap()));
        let got = float(&format!("SELECT rerank_score({q}, {d})"));
        assert!((got - case["score"].as_f64().unwrap()).abs() <= 1e-4, "truncated: {got}");
    }

    #[pg_test]
    fn rerank_orders_the_documents_and_skips_nulls() {
        use_test_reranker();
        let rows: Vec<(i32, f64)> = Spi::connect(|client| {
            client
                .select(
                    "SELECT idx, score FROM rerank('What is the capital of China?', \
                     ARRAY['Gravity pulls bodies together.', NULL, 'The capital of China is Beijing.', '北京'])",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| (row.get::<i32>(1).unwrap().unwrap(), row.get::<f64>(2).unwrap().unwrap()))
                .collect()
        });
        let mut idx: Vec<i32> = rows.iter().map(|r| r.0).collect();
        idx.sort();
        assert_eq!(idx, [1, 3, 4], "{rows:?}");
        assert!(rows.windows(2).all(|w| w[0].1 >= w[1].1), "descending: {rows:?}");
        for (i, score) in &rows {
            let doc =
                ["Gravity pulls bodies together.", "", "The capital of China is Beijing.", "北京"][*i as usize - 1];
            let alone = float(&format!("SELECT rerank_score('What is the capital of China?', {})", sql_literal(doc)));
            assert!((alone - score).abs() < 1e-6, "{i}: {alone} vs {score}");
            assert!((0.0..=1.0).contains(score));
        }
        assert!(Spi::get_one::<bool>("SELECT rerank_score(NULL, 'x') IS NULL").unwrap().unwrap());
        assert!(Spi::get_one::<bool>("SELECT rerank_score('x', NULL) IS NULL").unwrap().unwrap());
        let count = |q: &str| Spi::get_one::<i64>(&format!("SELECT count(*) FROM {q}")).unwrap().unwrap();
        assert_eq!(count("rerank(NULL, ARRAY['a'])"), 0);
        assert_eq!(count("rerank('q', NULL)"), 0);
        assert_eq!(count("rerank('q', ARRAY[NULL]::text[])"), 0);
        assert_eq!(count("rerank('q', ARRAY[]::text[])"), 0);
    }

    #[pg_test(error = "qwen_embed: qwen_embed.reranker_path is not set")]
    fn reranking_without_a_reranker_is_an_error() {
        Spi::run("SET qwen_embed.reranker_path = ''; SELECT rerank_score('q', 'd')").unwrap();
    }

    #[pg_test(error = "qwen_embed: input is 787 tokens long, which exceeds max_length 160")]
    fn an_over_long_pair_is_an_error_without_truncation() {
        let cases = use_test_reranker();
        let case = cases.iter().find(|c| c["max_length"] == 160).unwrap();
        let (q, d) = (sql_literal(case["query"].as_str().unwrap()), sql_literal(case["document"].as_str().unwrap()));
        Spi::run(&format!("SET qwen_embed.max_length = 160; SELECT rerank_score({q}, {d})")).unwrap();
    }

    #[pg_test(error = "permission denied to set parameter \"qwen_embed.model_path\"")]
    fn only_superusers_choose_the_model() {
        Spi::run("CREATE ROLE plain_user; SET ROLE plain_user; SET qwen_embed.model_path = '/tmp'").unwrap();
    }

    const LONG_DOC: &str =
        "repeat(E'PostgreSQL stores rows in heap pages. pgvector adds HNSW indexes to them.\n\n', 30)";

    #[pg_test]
    fn long_documents_are_chunked_in_order_within_the_budget_in_one_pass() {
        let passes = counter("forward_passes");
        let (chunks, longest, joined) = Spi::get_three::<i64, i32, bool>(&format!(
            "SELECT count(*), max(token_count(chunk)), string_agg(chunk, '' ORDER BY chunk_no) = {LONG_DOC}
             FROM embed_chunks({LONG_DOC}, 64, 0)"
        ))
        .unwrap();
        assert!(chunks.unwrap() > 5, "{chunks:?} chunks");
        assert!(longest.unwrap() <= 64, "a chunk of {longest:?} tokens");
        assert_eq!(joined, Some(true), "the chunks concatenate to the document");
        assert_eq!(counter("forward_passes") - passes, 1, "every chunk in one pass");
        // Each chunk's vector is embed() of its text.
        let worst = float(&format!(
            "SELECT max(1 - cosine_sim(embedding, embed(chunk))) FROM embed_chunks({LONG_DOC}, 64, 16)"
        ));
        assert!(worst < 1e-6, "{worst}");
    }

    #[pg_test]
    fn a_short_document_is_one_chunk_and_embeds_like_embed() {
        let doc = "'The capital of China is Beijing.'";
        assert_eq!(Spi::get_one::<i64>(&format!("SELECT count(*) FROM embed_chunks({doc})")).unwrap(), Some(1));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM embed_chunks(NULL)").unwrap(), Some(0));
        let whole = vector_sql(&format!("embed_document({doc}, weighting => 'position')"));
        assert!(max_diff(&whole, &vector_sql(&format!("embed({doc})"))) <= 1e-6);
    }

    #[pg_test]
    fn the_document_vector_is_the_normalised_mean_of_its_chunk_vectors() {
        let mean = vector_sql(&format!("SELECT l2_normalize(avg(embedding)) FROM embed_chunks({LONG_DOC}, 64, 8)"));
        let uniform = vector_sql(&format!("embed_document({LONG_DOC}, 64, 8)"));
        assert!(max_diff(&mean, &uniform) <= 1e-5);
        let position = vector_sql(&format!("embed_document({LONG_DOC}, 64, 8, 'position', 32)"));
        assert_eq!(position.len(), 32);
        assert!(Spi::get_one::<bool>("SELECT embed_document(NULL) IS NULL").unwrap().unwrap());
    }

    #[pg_test(error = "qwen_embed: unknown weighting \"median\"")]
    fn an_unknown_weighting_is_an_error() {
        Spi::run("SELECT embed_document('text', weighting => 'median')").unwrap();
    }

    #[pg_test(error = "qwen_embed: invalid chunking: overlap must be at most half of chunk_tokens (50), got 60")]
    fn an_overlap_over_half_the_chunk_is_an_error() {
        Spi::run("SELECT * FROM embed_chunks('text', 100, 60)").unwrap();
    }

    #[pg_test]
    fn the_stats_view_shows_this_backends_work() {
        let totals = || {
            let (calls, texts, passes) = Spi::get_three::<i64, i64, i64>(
                "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(texts), 0)::bigint, \
                        coalesce(sum(forward_passes), 0)::bigint FROM qwen_embed.stats WHERE pid = pg_backend_pid()",
            )
            .unwrap();
            (calls.unwrap(), texts.unwrap(), passes.unwrap())
        };
        let before = totals();
        // Texts no earlier test embedded (a cached one would run no model).
        Spi::run("SELECT embed(ARRAY['stats one', 'stats two', 'stats three'])").unwrap();
        Spi::run("SELECT embed('stats four')").unwrap();
        let after = totals();
        // Two calls, four texts, one forward pass each (three short texts share one).
        assert_eq!((after.0 - before.0, after.1 - before.1, after.2 - before.2), (2, 4, 2));
        let (pid, device, dtype) = Spi::get_three::<bool, String, String>(
            "SELECT pid = pg_backend_pid(), device, dtype FROM qwen_embed.stats",
        )
        .unwrap();
        assert_eq!((pid, device.as_deref(), dtype.as_deref()), (Some(true), Some("cpu"), Some("f32")));
        assert!(Spi::get_one::<bool>("SELECT last_call > now() - interval '1 minute' FROM qwen_embed.stats")
            .unwrap()
            .unwrap());
        let model = Spi::get_one::<String>("SELECT model FROM qwen_embed.stats").unwrap().unwrap();
        assert!(model.ends_with("qwen_embed-test-model"), "{model}");
    }
}
