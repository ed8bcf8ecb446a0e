//! The reranker against transformers: scores from tools/make_reranker_fixtures.py, computed in fp32 by the official
//! formulation (prefix + tokenised pair + suffix, left padding, softmax of the "yes"/"no" logits).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use qwen_embed_model::reranker::{DEFAULT_INSTRUCT, PREFIX, SUFFIX};
use qwen_embed_model::{Error, LengthPolicy, Limits, Precision, Reranker};
use serde::Deserialize;

const MAX_DIFF: f64 = 1e-4;

#[derive(Deserialize)]
struct Plain {
    ids: Vec<u32>,
    score: f64,
}

#[derive(Deserialize)]
struct Case {
    query: String,
    document: String,
    instruct: Option<String>,
    max_length: usize,
    ids: Vec<u32>,
    score: f64,
    plain_tokenizer: Plain,
}

#[derive(Deserialize)]
struct Reference {
    prefix: String,
    suffix: String,
    default_instruct: String,
    plain_post_processor: serde_json::Value,
    cases: Vec<Case>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("tiny-qwen3-reranker-reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reranker_dir() -> PathBuf {
    fixtures().join("tiny-qwen3-reranker")
}

fn load(dir: &Path) -> Reranker {
    Reranker::load(dir, &test_device(), qwen_embed_model::DType::F32).unwrap()
}

fn truncating(max_length: usize) -> Limits {
    Limits { max_length, policy: LengthPolicy::Truncate, ..Limits::default() }
}

fn score_one(r: &Reranker, c: &Case) -> f64 {
    r.rerank(&c.query, &[&c.document], c.instruct.as_deref(), &truncating(c.max_length), &|| false).unwrap().0[0]
}

/// A copy of the reranker's directory whose files `change` may rewrite (tokenizer.json is a real file there).
fn variant(change: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(reranker_dir().join(name), dir.path().join(name)).unwrap();
    }
    change(dir.path());
    dir
}

#[test]
fn the_prompt_is_the_official_one() {
    let r = reference();
    assert_eq!(PREFIX, r.prefix);
    assert_eq!(SUFFIX, r.suffix);
    assert_eq!(DEFAULT_INSTRUCT, r.default_instruct);
}

#[test]
fn every_case_matches_transformers_alone_and_batched() {
    let cases = reference().cases;
    let device = test_device();
    for precision in Precision::f32_variants(&device) {
        let r = Reranker::load_with(&reranker_dir(), &device, precision).unwrap();
        let kernel = precision.kernel_name();
        let mut worst = 0f64;
        for c in &cases {
            let ids = r.tokenize(&c.query, &c.document, c.instruct.as_deref(), &truncating(c.max_length)).unwrap();
            assert_eq!(ids, c.ids, "{kernel}: ids of {:?} / {:.40}", c.query, c.document);
            let got = score_one(&r, c);
            assert!((got - c.score).abs() <= MAX_DIFF, "{kernel}: {got} vs {} for {:?}", c.score, c.query);
            worst = worst.max((got - c.score).abs());
        }
        // Pairs sharing a query and instruction, in one call, in several padded batches (a small token budget).
        let mut groups: HashMap<(String, Option<String>), Vec<&Case>> = HashMap::new();
        for c in cases.iter().filter(|c| c.max_length == 8192) {
            groups.entry((c.query.clone(), c.instruct.clone())).or_default().push(c);
        }
        let limits = Limits { batch_tokens: 200, ..Limits::default() };
        for ((query, instruct), group) in &groups {
            let docs: Vec<&str> = group.iter().map(|c| c.document.as_str()).collect();
            let (scores, work) = r.rerank(query, &docs, instruct.as_deref(), &limits, &|| false).unwrap();
            assert_eq!(work.texts, docs.len());
            for (got, c) in scores.iter().zip(group) {
                assert!((got - c.score).abs() <= MAX_DIFF, "{kernel} batched: {got} vs {}", c.score);
            }
        }
        println!("{kernel}: {} cases, max |score diff| {worst:.2e}", cases.len());
    }
    assert!(cases.iter().any(|c| c.score > 0.05 && c.score < 0.95), "fixture scores must not all saturate");
}

#[test]
fn a_tokenizer_without_post_processor_decides_no_closing_token() {
    let reference = reference();
    let dir = variant(|dir| {
        let path = dir.join("tokenizer.json");
        let mut tokenizer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        tokenizer["post_processor"] = reference.plain_post_processor.clone();
        std::fs::write(&path, serde_json::to_string(&tokenizer).unwrap()).unwrap();
    });
    let r = load(dir.path());
    for c in &reference.cases {
        let limits = truncating(c.max_length);
        let ids = r.tokenize(&c.query, &c.document, c.instruct.as_deref(), &limits).unwrap();
        assert_eq!(ids, c.plain_tokenizer.ids);
        let got = r.rerank(&c.query, &[&c.document], c.instruct.as_deref(), &limits, &|| false).unwrap().0[0];
        assert!((got - c.plain_tokenizer.score).abs() <= MAX_DIFF, "{got} vs {}", c.plain_tokenizer.score);
    }
}

#[test]
fn truncation_cuts_the_body_never_prefix_or_suffix() {
    let r = load(&reranker_dir());
    let reference = reference();
    let c = reference.cases.iter().find(|c| c.max_length == 120).unwrap();
    let ids = r.tokenize(&c.query, &c.document, c.instruct.as_deref(), &truncating(120)).unwrap();
    assert_eq!(ids.len(), 120);
    let prefix = r.tokenize("", "", None, &Limits::default()).unwrap();
    // Both inputs start with the whole prefix and end with the whole suffix.
    let n = prefix.iter().zip(&ids).take_while(|(a, b)| a == b).count();
    assert!(n >= 20, "shared prefix of {n} tokens");
    let m = prefix.iter().rev().zip(ids.iter().rev()).take_while(|(a, b)| a == b).count();
    assert!(m >= 10, "shared suffix of {m} tokens");
    // Without truncation the same pair is an error naming its length and the limit.
    let strict = Limits { max_length: 120, ..Limits::default() };
    match r.rerank(&c.query, &[&c.document], c.instruct.as_deref(), &strict, &|| false) {
        Err(Error::PairTooLong { tokens, limit: 120 }) => assert!(tokens > 120),
        other => panic!("{:?}", other.map(|(s, _)| s)),
    }
    // A limit that leaves no room for the pair is an error even with truncation, naming what the prompt takes.
    match r.tokenize("q", "d", None, &truncating(20)) {
        Err(e @ Error::NoRoomForPair { limit: 20, prompt }) => {
            assert!(prompt > 20 && e.hint().unwrap().contains(&prompt.to_string()), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_untied_head_is_read_from_lm_head_weight() {
    let path = reranker_dir().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let embed_name = tensors.keys().find(|k| k.ends_with("embed_tokens.weight")).unwrap().clone();
    let tokenizer = tokenizers::Tokenizer::from_file(reranker_dir().join("tokenizer.json")).unwrap();
    let (yes, no) = (tokenizer.token_to_id("yes").unwrap() as usize, tokenizer.token_to_id("no").unwrap() as usize);
    // lm_head = embed_tokens with the "yes" and "no" rows swapped: every score becomes 1 − score.
    let embed = &tensors[&embed_name];
    let mut rows: Vec<candle_core::Tensor> = (0..embed.dim(0).unwrap()).map(|i| embed.get(i).unwrap()).collect();
    rows.swap(yes, no);
    let head = candle_core::Tensor::stack(&rows, 0).unwrap();
    let untie = |dir: &Path, with_head: bool| {
        let mut out = tensors.clone();
        if with_head {
            out.insert("lm_head.weight".into(), head.clone());
        }
        candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
        let config_path = dir.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        config["tie_word_embeddings"] = false.into();
        std::fs::write(&config_path, config.to_string()).unwrap();
    };
    let dir = variant(|d| untie(d, true));
    let untied = load(dir.path());
    for c in reference().cases.iter().take(4) {
        let got = score_one(&untied, c);
        assert!((got - (1.0 - c.score)).abs() <= MAX_DIFF, "{got} vs 1 - {}", c.score);
    }
    let dir = variant(|d| untie(d, false));
    let err = Reranker::load(dir.path(), &test_device(), qwen_embed_model::DType::F32).err().expect("an error");
    assert!(err.to_string().contains("lm_head.weight"), "{err}");
}
