-- Bad input and model faults are ERRORs with a SQLSTATE and a hint; the session stays usable and recovers
-- without reconnecting once the fault is fixed. :model_dir holds the test model and broken copies of it
-- (tests/run_sql_tests.sh): unreadable (weights mode 000), truncated (weights cut short), llama (model_type llama).
CREATE EXTENSION qwen_embed CASCADE;

SELECT expect_error($q$SELECT embed('hello', dim => 8)$q$, '22023', 'dim must be between 32 and 64, got 8',
                    'Pass NULL for the model''s full dimension');
SELECT expect_error($q$SELECT cosine_sim('[1,2]'::vector, '[1,2,3]'::vector)$q$, '22000', 'different vector dimensions',
                    'same model and dim');
SELECT expect_error($q$SELECT cosine_sim(ARRAY[1,NULL]::real[], ARRAY[1,2]::real[])$q$, '22004', 'NULLs');
SET qwen_embed.max_length = 4;
SELECT expect_error($q$SELECT embed('The capital of China is Beijing.')$q$, '54000',
                    'input is 8 tokens long, which exceeds max_length 4', 'set qwen_embed.truncate = on');
SET qwen_embed.truncate = on;
SELECT expect(vector_dims(embed('The capital of China is Beijing.')) = 64, 'truncate = on embeds');
RESET qwen_embed.truncate;
RESET qwen_embed.max_length;

-- NULL conventions and edge inputs.
SELECT expect(embed(NULL) IS NULL, 'embed(NULL) is NULL');
SELECT expect(abs(vector_norm(embed('')) - 1) < 1e-5, 'empty text embeds (just <|endoftext|>)');
SELECT expect(abs(vector_norm(embed(E'  \n\t ')) - 1) < 1e-5, 'whitespace embeds');
SELECT expect(cardinality(embed(ARRAY[]::text[])) = 0, 'empty array gives an empty array');
SELECT expect((embed(ARRAY['a', NULL]))[2] IS NULL, 'NULL element stays NULL');
SELECT expect(cosine_sim('[0,0,0]'::vector, '[1,2,3]'::vector) = 0, 'zero vector similarity is 0');

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
SELECT expect(value::int >= 6, value || ' errors counted') FROM qwen_embed.info() WHERE key = 'errors';
