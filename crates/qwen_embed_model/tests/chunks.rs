//! Long documents: chunking on the real tokenizer and the document vector built from chunk vectors.

mod common;

use common::*;
use qwen_embed_model::{Embedder, Limits, Weighting};

fn long_document() -> String {
    let longest = reference_cases().into_iter().max_by_key(|c| c.ids.len()).unwrap();
    assert!(longest.ids.len() > 1000);
    // Paragraphs and a few scripts, so boundaries of every kind are there to find.
    format!("{}\n\n北京是中国的首都。它有很多历史。😀👍🏽 Ελληνικά κείμενο.\n\n{}", longest.text, longest.text)
}

fn chunks(model: &Embedder, doc: &str, chunk_tokens: usize, overlap: usize) -> Vec<qwen_embed_model::Chunk> {
    model.embed_chunks(doc, chunk_tokens, overlap, None, &Limits::default(), &|| false).unwrap().0
}

#[test]
fn a_short_document_is_one_chunk_equal_to_embed() {
    let model = load(&tiny_model());
    let doc = "The capital of China is Beijing.";
    let got = chunks(&model, doc, 512, 64);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].range, 0..doc.len());
    assert_eq!(got[0].embedding, embed_one(&model, doc, None));
    let (vector, _) =
        model.embed_document(doc, 512, 64, Weighting::Position, None, &Limits::default(), &|| false).unwrap();
    assert!(max_abs_diff(&vector, &embed_one(&model, doc, None)) < 1e-6);
}

#[test]
fn chunks_respect_the_budget_and_cover_the_document_in_order() {
    let model = load(&tiny_model());
    let doc = long_document();
    for (budget, overlap) in [(128, 0), (128, 32), (512, 64), (16, 8)] {
        let got = chunks(&model, &doc, budget, overlap);
        assert!(got.len() > 2, "{budget}: {} chunks", got.len());
        assert_eq!(got[0].range.start, 0);
        assert_eq!(got.last().unwrap().range.end, doc.len());
        for c in &got {
            assert!(c.ids.len() <= budget, "{budget}/{overlap}: a chunk of {} tokens", c.ids.len());
            assert_eq!(c.ids, model.tokenize(&doc[c.range.clone()], None, &Limits::default()).unwrap());
        }
        for pair in got.windows(2) {
            assert!(pair[0].range.start < pair[1].range.start, "in order");
            if overlap == 0 {
                assert_eq!(pair[0].range.end, pair[1].range.start, "no gap, no overlap");
            } else {
                assert!(pair[1].range.start < pair[0].range.end, "overlapping");
            }
        }
        if overlap == 0 {
            let joined: String = got.iter().map(|c| &doc[c.range.clone()]).collect();
            assert_eq!(joined, doc, "no text lost");
        }
    }
}

#[test]
fn chunks_end_at_paragraph_and_sentence_boundaries() {
    let model = load(&tiny_model());
    let doc = long_document();
    let got = chunks(&model, &doc, 128, 0);
    let at_boundary = got[..got.len() - 1]
        .iter()
        .filter(|c| {
            let t = doc[c.range.clone()].trim_end();
            t.ends_with(['.', '!', '?', '。']) || doc[c.range.clone()].ends_with('\n')
        })
        .count();
    println!("{at_boundary} of {} chunk ends at a sentence or line end", got.len() - 1);
    assert!(at_boundary * 10 >= (got.len() - 1) * 8, "{at_boundary} of {} chunks end at a boundary", got.len() - 1);
}

#[test]
fn chunk_vectors_equal_embedding_each_chunk_in_one_pass() {
    let model = load(&tiny_model());
    let doc = long_document();
    let (got, work) = model.embed_chunks(&doc, 256, 32, None, &Limits::default(), &|| false).unwrap();
    assert_eq!(work.forward_passes, 1, "{} chunks of ≤256 tokens fit one 8192-token pass", got.len());
    for c in &got {
        let alone = embed_one(&model, &doc[c.range.clone()], None);
        assert!(max_abs_diff(&c.embedding, &alone) < 1e-5);
    }
    let small = Limits { batch_tokens: 512, ..Limits::default() };
    let (_, work) = model.embed_chunks(&doc, 256, 32, None, &small, &|| false).unwrap();
    assert_eq!(work.forward_passes, got.len().div_ceil(2), "two 256-token chunks per 512-token pass");
}

#[test]
fn the_document_vector_is_the_weighted_mean_of_its_chunks() {
    let model = load(&tiny_model());
    let doc = long_document();
    let limits = Limits::default();
    let got = chunks(&model, &doc, 128, 16);
    let n = got.len();
    let mean = |w: &dyn Fn(usize) -> f64| {
        let mut v = vec![0f64; got[0].embedding.len()];
        for (i, c) in got.iter().enumerate() {
            v.iter_mut().zip(&c.embedding).for_each(|(s, x)| *s += w(i) * *x as f64);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| (x / norm) as f32).collect::<Vec<f32>>()
    };
    let document = |w| model.embed_document(&doc, 128, 16, w, None, &limits, &|| false).unwrap().0;
    let uniform = document(Weighting::Uniform);
    assert!(max_abs_diff(&uniform, &mean(&|_| 1.0)) < 1e-6);
    let position = document(Weighting::Position);
    let ends = |i: usize| 1.0 + (2.0 * i as f64 / (n - 1) as f64 - 1.0).abs();
    assert!(max_abs_diff(&position, &mean(&ends)) < 1e-6);
    assert!(max_abs_diff(&position, &uniform) > 1e-4, "weightings differ");
    let norm: f64 = position.iter().map(|x| (*x as f64).powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-5);
    // Matryoshka applies to every chunk before the mean.
    let small = model.embed_document(&doc, 128, 16, Weighting::Uniform, Some(32), &limits, &|| false).unwrap().0;
    assert_eq!(small.len(), 32);
}

#[test]
fn bad_chunking_arguments_are_errors() {
    let model = load(&tiny_model());
    for (budget, overlap) in [(8, 0), (100, 60), (100_000, 0)] {
        let err = model.embed_chunks("text", budget, overlap, None, &Limits::default(), &|| false).unwrap_err();
        assert!(err.to_string().contains("chunk"), "{err}");
    }
}
