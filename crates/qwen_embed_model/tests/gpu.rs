//! CUDA's failure paths, on the GPU that `QWEN_EMBED_TEST_DEVICE=cuda:N` names (built with `--features cuda`);
//! elsewhere each test says SKIPPED. The accuracy of every dtype on the GPU is reference.rs's, run on that device.

mod common;

use common::*;
use qwen_embed_model::candle::Tensor;
use qwen_embed_model::memory::gpu_memory;
use qwen_embed_model::{DType, Device, Embedder, ErrorKind, Limits};

fn gpu_or_skip(test: &str) -> Option<Device> {
    let device = test_device();
    if device.is_cpu() {
        println!("SKIPPED {test}: needs a GPU (QWEN_EMBED_TEST_DEVICE=cuda:0, --features cuda)");
        return None;
    }
    Some(device)
}

/// Allocations that leave only about `keep` bytes of the GPU free, held until dropped.
fn fill_gpu_leaving(device: &Device, keep: u64) -> Vec<Tensor> {
    let mut held = Vec::new();
    for chunk in [1u64 << 30, 64 << 20, 4 << 20] {
        while gpu_memory(device).unwrap().0 > keep + chunk {
            held.push(Tensor::zeros(chunk as usize, DType::U8, device).unwrap());
        }
    }
    held
}

#[test]
fn a_gpu_that_does_not_exist_is_an_error_naming_it() {
    if cfg!(not(feature = "cuda")) {
        println!("SKIPPED a_gpu_that_does_not_exist_is_an_error_naming_it: built without --features cuda");
        return;
    }
    let err = qwen_embed_model::device::select_device("cuda:99").unwrap_err();
    assert!(err.contains("CUDA device 99 is not usable"), "{err}");
    println!("cuda:99: {err}");
}

#[test]
fn loading_into_a_full_gpu_is_an_error_naming_the_sizes() {
    let Some(device) = gpu_or_skip("loading_into_a_full_gpu_is_an_error_naming_the_sizes") else { return };
    let filler = fill_gpu_leaving(&device, 128 << 20);
    let err = Embedder::load(&tiny_model(), &device, DType::F32).err().expect("no room for the model");
    let message = err.to_string();
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{message}");
    assert!(message.contains("MB is left under the GPU's free memory"), "{message}");
    println!("full GPU: {message}");
    drop(filler);
    device.synchronize().unwrap(); // freed memory goes back to the driver once the stream has caught up
    load(&tiny_model());
}

#[test]
fn a_pass_the_gpu_has_no_memory_for_is_an_error_and_the_gpu_recovers() {
    let Some(device) = gpu_or_skip("a_pass_the_gpu_has_no_memory_for_is_an_error_and_the_gpu_recovers") else {
        return;
    };
    let model = load(&tiny_model());
    let case = reference_cases().remove(0);
    assert!(cosine(&embed_one(&model, &case.text, case.instruct.as_deref()), &case.embedding) > 0.99999); // warm: cuBLAS's workspace
    let filler = fill_gpu_leaving(&device, 64 << 20);
    // 64 rows of 2,000 tokens: the attention scores alone take gigabytes.
    let seqs = vec![vec![785u32; 2000]; 64];
    #[allow(clippy::err_expect)] // expect_err would print the Ok value: 64 vectors
    let err = model.embed_tokens(&seqs, usize::MAX, &|| false).err().expect("the pass cannot fit");
    let message = err.to_string();
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{message}");
    assert!(message.contains("64 × 2000 tokens") && message.contains("MB of the GPU's"), "{message}");
    assert!(err.hint().unwrap().contains("qwen_embed.batch_tokens"));
    println!("pass too big: {message}");
    drop(filler);
    device.synchronize().unwrap();
    let again =
        model.embed(&[case.text.as_str()], case.instruct.as_deref(), None, &Limits::default(), &|| false).unwrap().0;
    assert!(max_abs_diff(&again[0], &case.embedding) <= 1e-4, "the GPU works again after the failure");
}
