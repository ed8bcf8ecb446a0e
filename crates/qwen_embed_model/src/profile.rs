//! Where a forward pass's time goes, for `examples/bench --profile`: wall time summed per [`Part`] while profiling is
//! on (off by default: then [`timed`] is one relaxed load and a call). The parts are timed where they run, never
//! nested, so they add up; what is left of a pass (the embedding lookup, tensors made and dropped, the final norm) is
//! the caller's "other".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a stretch of a forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The projections' products (oneDNN's or our kernels, with what rides on their copy-out: the residual add,
    /// SwiGLU).
    Linear,
    /// The attention's scores, softmax and weighted values, and its output packed back into rows.
    Attention,
    /// RMSNorm of the hidden states, and the per-head q/k norms with RoPE as attention's input is laid out.
    NormsRope,
    /// Passes of their own over the activations: conversions (to bf16 for the products), SwiGLU and residual adds
    /// where they are not fused into a product.
    Elementwise,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Linear, Part::Attention, Part::NormsRope, Part::Elementwise];

    pub fn name(self) -> &'static str {
        match self {
            Part::Linear => "linear",
            Part::Attention => "attention",
            Part::NormsRope => "norms_rope",
            Part::Elementwise => "elementwise",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Starts (or stops) summing; the sums are process-wide (a benchmark times one pass at a time).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Runs `f`, adding its wall time to `part` while profiling is on.
#[inline]
pub fn timed<R>(part: Part, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let started = Instant::now();
    let out = f();
    NANOS[part as usize].fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

/// The sums since the last call, per part (in [`Part::ALL`]'s order), and zeroes them.
pub fn take() -> [(Part, Duration); 4] {
    Part::ALL.map(|p| (p, Duration::from_nanos(NANOS[p as usize].swap(0, Ordering::Relaxed))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_their_time_only_while_enabled() {
        take();
        timed(Part::Attention, || std::thread::sleep(Duration::from_millis(5)));
        assert_eq!(take()[1].1, Duration::ZERO, "off: nothing summed");
        enable(true);
        timed(Part::Attention, || std::thread::sleep(Duration::from_millis(5)));
        timed(Part::Linear, || ());
        enable(false);
        let sums = take();
        assert!(sums[1].1 >= Duration::from_millis(5), "{sums:?}");
        assert!(sums[0].1 < Duration::from_millis(5), "{sums:?}");
        assert_eq!(take()[1].1, Duration::ZERO, "taken: zeroed");
    }
}
