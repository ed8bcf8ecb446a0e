//! The encoder against Hugging Face transformers: vectors from tools/make_fixtures.py, computed in fp32 by AutoModel
//! with left padding and last-token pooling, cross-checked there against sentence-transformers.

mod common;

use common::*;
use qwen_embed_model::precision::LinearKernel;
use qwen_embed_model::{DType, Embedder, Limits, Precision, Work};

const MIN_COSINE: f64 = 0.99999;
const MAX_DIFF: f32 = 1e-4;

#[test]
fn every_reference_case_matches_transformers() {
    let cases = reference_cases();
    assert!(cases.len() >= 20);
    assert!(cases.iter().any(|c| c.ids.len() > 1000), "a case over 1000 tokens");
    let device = test_device();
    // Every f32 kernel this machine has (packed AVX2/FMA and candle's portable one on x86-64).
    for precision in Precision::f32_variants(&device) {
        let model = Embedder::load_with(&tiny_model(), &device, precision).unwrap();
        let (mut min_cos, mut max_diff) = (1.0f64, 0.0f32);
        for case in &cases {
            let got = embed_one(&model, &case.text, case.instruct.as_deref());
            let (cos, diff) = (cosine(&got, &case.embedding), max_abs_diff(&got, &case.embedding));
            let kernel = precision.kernel_name();
            assert!(cos >= MIN_COSINE && diff <= MAX_DIFF, "{kernel}: {:?}: cos {cos}, max diff {diff}", case.input);
            min_cos = min_cos.min(cos);
            max_diff = max_diff.max(diff);
        }
        let kernel = precision.kernel_name();
        println!("{kernel}: {} cases: min cosine {min_cos:.9}, max |diff| {max_diff:.3e}", cases.len());
    }
}

#[test]
fn token_ids_match_the_hugging_face_tokenizer() {
    let model = load(&tiny_model());
    let limits = Limits::default();
    assert_eq!(
        model.tokenize("The capital of China is Beijing.", None, &limits).unwrap(),
        [785, 6722, 315, 5616, 374, 26549, 13, 151643]
    );
    for case in reference_cases() {
        assert_eq!(
            model.tokenize(&case.text, case.instruct.as_deref(), &limits).unwrap(),
            case.ids,
            "{:?}",
            case.input
        );
    }
}

#[test]
fn instruction_format_has_no_space_after_query() {
    let case = reference_cases().into_iter().find(|c| c.instruct.is_some()).unwrap();
    assert_eq!(case.input, format!("Instruct: {}\nQuery:{}", case.instruct.as_ref().unwrap(), case.text));
    assert_eq!(qwen_embed_model::format_input(&case.text, case.instruct.as_deref()), case.input);
}

#[test]
fn a_mixed_length_batch_equals_each_text_alone() {
    let model = load(&tiny_model());
    let cases = reference_cases();
    let texts: Vec<&str> = cases.iter().filter(|c| c.instruct.is_none()).map(|c| c.text.as_str()).collect();
    // A budget that forces several passes, each with padding.
    let limits = Limits { batch_tokens: 4096, ..Limits::default() };
    let (batched, work) = model.embed(&texts, None, None, &limits, &|| false).unwrap();
    assert!(work.forward_passes > 1 && work.forward_passes < texts.len(), "{work:?}");
    let mut worst = 0.0f32;
    for (text, got) in texts.iter().zip(&batched) {
        let alone = embed_one(&model, text, None);
        worst = worst.max(max_abs_diff(got, &alone));
    }
    assert!(worst <= 1e-5, "batched vs alone: max diff {worst}");
    println!("batched vs alone: max |diff| {worst:.3e}");
}

/// The device path (candle's operations on the padded layout: a GPU's) run on this CPU in f16: padded batches give
/// each text's own vector, within f16's rounding of the reference.
#[test]
fn the_padded_device_path_matches_the_reference_batched_and_alone() {
    let precision = Precision { linear: LinearKernel::Candle, activations: DType::F16 };
    let model = Embedder::load_with(&tiny_model(), &candle_core::Device::Cpu, precision).unwrap();
    let cases: Vec<_> = reference_cases().into_iter().filter(|c| c.instruct.is_none() && c.ids.len() < 600).collect();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let limits = Limits { batch_tokens: 4096, ..Limits::default() };
    let (batched, work) = model.embed(&texts, None, None, &limits, &|| false).unwrap();
    assert!(work.forward_passes < texts.len(), "{work:?}");
    let (mut min_cos, mut worst) = (1.0f64, 0.0f32);
    for ((case, text), got) in cases.iter().zip(&texts).zip(&batched) {
        min_cos = min_cos.min(cosine(got, &case.embedding));
        worst = worst.max(max_abs_diff(got, &embed_one(&model, text, None)));
    }
    println!("device path in f16 on a CPU: min cosine {min_cos:.7}, batched vs alone max |diff| {worst:.3e}");
    assert!(min_cos >= 0.999, "min cosine {min_cos}");
    assert!(worst <= 2e-3, "batched vs alone: max diff {worst}");
}

#[test]
fn one_pass_embeds_a_batch_in_input_order() {
    let model = load(&tiny_model());
    let cases: Vec<_> = reference_cases().into_iter().filter(|c| c.instruct.is_none() && c.ids.len() < 100).collect();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let (vectors, work) = model.embed(&texts, None, None, &Limits::default(), &|| false).unwrap();
    assert_eq!(work, Work { texts: texts.len(), tokens: cases.iter().map(|c| c.ids.len()).sum(), forward_passes: 1 });
    for (case, got) in cases.iter().zip(&vectors) {
        assert!(max_abs_diff(got, &case.embedding) <= MAX_DIFF, "{:?}", case.text);
    }
}

#[test]
fn matryoshka_keeps_a_renormalised_prefix_of_the_reference() {
    let model = load(&tiny_model());
    let case = &reference_cases()[0];
    for dim in [32, 48, 64] {
        let got = model.embed(&[&case.text], None, Some(dim), &Limits::default(), &|| false).unwrap().0.remove(0);
        assert_eq!(got.len(), dim as usize);
        let norm: f32 = case.embedding[..dim as usize].iter().map(|x| x * x).sum::<f32>().sqrt();
        let expected: Vec<f32> = case.embedding[..dim as usize].iter().map(|x| x / norm).collect();
        assert!(max_abs_diff(&got, &expected) <= MAX_DIFF, "dim {dim}");
        assert!((got.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }
    for bad in [0, 31, 65, -5] {
        let err = model.embed(&[&case.text], None, Some(bad), &Limits::default(), &|| false).unwrap_err();
        assert!(err.to_string().contains("between 32 and 64"), "{err}");
    }
}

#[test]
fn half_precision_stays_within_the_accuracy_target() {
    let device = test_device();
    // bf16 everywhere; f16 on a GPU, and on a CPU with the AVX2/FMA kernel (f16 weights, f32 arithmetic: `auto`
    // there). Elsewhere on a CPU candle would compute f16 without a fast kernel: nobody's choice.
    let f16 = !device.is_cpu() || qwen_embed_model::cpu::f32_kernel().is_some();
    let dtypes: &[DType] = if f16 { &[DType::BF16, DType::F16] } else { &[DType::BF16] };
    for &dtype in dtypes {
        let model = Embedder::load(&tiny_model(), &device, dtype).unwrap();
        if device.is_cpu() && dtype == DType::BF16 {
            // On a CPU bf16 means packed bf16 weights with f32 activations, where the CPU has a bf16 kernel.
            let packed = qwen_embed_model::precision::bf16_kernel().is_some();
            assert_eq!(model.dtype(), if packed { DType::BF16 } else { DType::F32 });
            if !packed {
                // The model fell back to f32: comparing it would say nothing about bf16.
                let why = if cfg!(onednn) { "no bf16 kernel on this CPU" } else { "built without oneDNN" };
                println!("SKIPPED half_precision_stays_within_the_accuracy_target (bf16): {why}");
                continue;
            }
        }
        assert_eq!(model.dtype(), dtype);
        let mut min_cos = 1.0f64;
        for case in &reference_cases() {
            let got = embed_one(&model, &case.text, case.instruct.as_deref());
            min_cos = min_cos.min(cosine(&got, &case.embedding));
        }
        // bf16 activations (a GPU) round every hidden state to 8 bits of mantissa; in this 32-wide model that costs
        // more than at full size: transformers in bf16 reaches min cosine 0.99961 on these cases (0.99954 eager), and
        // both it and ours reach 0.9999 on the real 0.6B shape (bench/run.py --device cuda). On a CPU bf16 means bf16
        // weights with f32 activations (0.99993 here) and attention with bf16 operands, as PyTorch's CPU attention
        // computes there: 0.99986 here, 0.99999 on the real shape against PyTorch fp32 (bench/run.py, where PyTorch
        // bf16 reaches 0.99992). f16 weights with f32 activations (a CPU's `auto` without bf16 instructions) are held
        // to the f32 paths' target.
        let target = match (dtype, device.is_cpu()) {
            (DType::BF16, false) => 0.9996,
            (DType::BF16, true) => 0.9998,
            (DType::F16, true) => 0.99999,
            _ => 0.9999,
        };
        assert!(min_cos >= target, "{dtype:?} on {device:?}: min cosine {min_cos}, below {target}");
        println!("{dtype:?} on {device:?} ({} kernel): min cosine {min_cos:.7}", model.precision().kernel_name());
    }
}

#[test]
fn f16_weights_from_an_f32_checkpoint_stay_within_the_accuracy_target() {
    if qwen_embed_model::cpu::f32_kernel().is_none() {
        return println!("SKIPPED f16_weights_from_an_f32_checkpoint_stay_within_the_accuracy_target: no AVX2/FMA");
    }
    // The fixture is bf16, which f16 holds exactly but for weights below 2^-14: this checkpoint's f32 weights use
    // all 24 bits (each scaled by a different 1 + 1e-3·u), so f16 rounds nearly every one of them.
    let dir = tempfile::tempdir().unwrap();
    common::copy_without_weights(dir.path());
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = common::tiny_tensors()
        .into_iter()
        .map(|(name, t)| {
            let t = t.to_dtype(DType::F32).unwrap();
            let n = t.elem_count() as u64;
            let jitter: Vec<f32> = (0..n).map(|i| 1.0 + 1e-3 * ((i * 2654435761 % 1000) as f32 / 1000.0)).collect();
            let jitter = candle_core::Tensor::from_vec(jitter, t.shape(), t.device()).unwrap();
            (name, (t * jitter).unwrap())
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let exact = Embedder::load(dir.path(), &candle_core::Device::Cpu, DType::F32).unwrap();
    let half = Embedder::load(dir.path(), &candle_core::Device::Cpu, DType::F16).unwrap();
    assert_eq!(half.precision().kernel_name(), "avx2-fma f16-weights");
    let mut min_cos = 1.0f64;
    for case in &reference_cases() {
        let a = embed_one(&exact, &case.text, case.instruct.as_deref());
        let b = embed_one(&half, &case.text, case.instruct.as_deref());
        assert_ne!(a, b, "f16 rounding changed nothing: the test would not see it");
        min_cos = min_cos.min(cosine(&a, &b));
    }
    println!("f16 weights from an f32 checkpoint: min cosine against its f32 weights {min_cos:.7}");
    assert!(min_cos >= MIN_COSINE, "min cosine {min_cos}, below {MIN_COSINE}");
}
