-- Model faults are ERRORs with a SQLSTATE and a hint; the session stays usable and recovers without reconnecting once
-- the fault is fixed. :model_dir holds the test model and broken copies of it (tests/run_sql_tests.sh): unreadable
-- (weights mode 000), truncated (weights cut short), llama (model_type llama). Bad input and the NULL conventions are
-- pg_regress output (tests/regress/sql/api.sql), where the messages, hints and SQLSTATEs show as a diff.
CREATE EXTENSION qwen_embed CASCADE;

-- Model faults, each with its SQLSTATE and hint, then recovery in the same session.
SET qwen_embed.model_path = '/nonexistent/model';
SELECT expect_error($q$SELECT embed('x')$q$, '58P01', 'does not exist', 'Point qwen_embed.model_path');
SET qwen_embed.model_path = '/etc/hostname';
SELECT expect_error($q$SELECT embed('x')$q$, '58P01', 'is not a directory', 'Point qwen_embed.model_path');
SET qwen_embed.model_path = '/etc';
SELECT expect_error($q$SELECT embed('x')$q$, '58P01', 'has no config.json', 'Point qwen_embed.model_path');
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/unreadable', false);
SELECT expect_error($q$SELECT embed('x')$q$, '58030', 'model.safetensors', 'must be able to read the model files');
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/truncated', false);
SELECT expect_error($q$SELECT embed('x')$q$, 'F0000', 'model.safetensors', 'download the model again');
SELECT set_config('qwen_embed.model_path', :'model_dir' || '/llama', false);
SELECT expect_error($q$SELECT embed('x')$q$, '0A000', 'llama', 'Qwen3-architecture models');
SET qwen_embed.device = 'tpu';
SELECT expect_error($q$SELECT embed('x')$q$, '22023', 'invalid qwen_embed.device');
RESET qwen_embed.device;
RESET qwen_embed.model_path;
SELECT expect(abs(vector_norm(embed('works again')) - 1) < 1e-5, 'the session recovers');
-- Each failed model load above counted once: six. (The invalid device is the setting's error, refused before any
-- model is looked at, and not a call's.)
SELECT expect(value::int = 6, value || ' errors counted, expected 6') FROM (SELECT info_value('info', 'errors') AS value) kv;
