//! `examples/bench --profile`'s sums: every part of a pass is timed, nothing twice (the parts never add up to more than
//! the pass), and nothing while profiling is off. A test binary of its own: the sums are process-wide.

mod common;

use std::time::{Duration, Instant};

use common::*;
use qwen_embed_model::profile::{enable, take, Part};

#[test]
fn a_pass_is_split_into_parts_that_add_up_to_at_most_its_time() {
    let model = load(&tiny_model());
    let tokens: Vec<u32> = (10..90).collect();
    let pass = || model.embed_tokens(&[tokens.clone(), tokens[..30].to_vec()], 8192, &|| false).unwrap();
    pass(); // warm-up (primitives made, threads started)
    take();
    pass();
    assert!(take().iter().all(|&(_, d)| d == Duration::ZERO), "profiling off: nothing summed");

    enable(true);
    let started = Instant::now();
    pass();
    let wall = started.elapsed();
    enable(false);
    let parts = take();
    for part in [Part::Linear, Part::Attention, Part::NormsRope] {
        let (_, d) = parts.iter().find(|(p, _)| *p == part).unwrap();
        assert!(*d > Duration::ZERO, "{} not timed: {parts:?}", part.name());
    }
    let sum: Duration = parts.iter().map(|&(_, d)| d).sum();
    assert!(sum <= wall, "the parts ({sum:?}) overlap: more than the pass ({wall:?}): {parts:?}");
}
