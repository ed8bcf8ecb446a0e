//! What the packed f32 matmul (`f32_matmul`) needs: the output's column panels split into contiguous
//! runs, one rayon task each, all writing through one shared pointer; then the padded width cut to the real one. The
//! shared pointer type serves the attention kernel's tasks too.

use std::ops::Range;

use rayon::prelude::*;

/// An output buffer that parallel tasks write in disjoint parts (the matmuls: their own panels' columns; attention:
/// its own sequence, head and query block).
pub(crate) struct SharedOut(pub *mut f32);
// SAFETY: every user writes only the part of the buffer its task owns, and the buffer outlives the tasks: they end
// before the function that made the pointer returns.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// An `alloc_rows` × `ldc` output computed by runs of consecutive panels, about `runs_per_thread` per pool thread
/// (a run reuses the activations it reads across its panels); `compute(run, out)` writes only its run's columns.
/// Returns the first `rows` rows, cut to `width` columns.
pub(crate) fn by_panel_runs(
    panels: usize,
    runs_per_thread: usize,
    (alloc_rows, ldc): (usize, usize),
    (rows, width): (usize, usize),
    compute: impl Fn(Range<usize>, *mut f32) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; alloc_rows * ldc];
    let shared = SharedOut(out.as_mut_ptr());
    let per_run = panels.div_ceil(rayon::current_num_threads().max(1) * runs_per_thread).max(1);
    (0..panels.div_ceil(per_run)).into_par_iter().for_each(|i| {
        let shared = &shared; // the whole Sync wrapper, not its raw pointer field
        compute(i * per_run..((i + 1) * per_run).min(panels), shared.0)
    });
    if ldc != width {
        for r in 1..rows {
            out.copy_within(r * ldc..r * ldc + width, r * width);
        }
    }
    out.truncate(rows * width);
    out
}
