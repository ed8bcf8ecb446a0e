//! The server's heap: its free memory back to the system when the server falls idle, and the bytes in use.
//!
//! A batch's activations are freed when it ends, but glibc keeps freed memory in its arenas (one per thread that
//! allocated: the batch threads and the pool's), so after a burst — a backfill's large batches, a long document — the
//! server would hold its peak resident for as long as it runs. Once no work has run for [`IDLE`], the first batch
//! thread to notice calls `malloc_trim`, which returns every arena's free pages; the next batch faults its buffers in
//! again, a cost only after a pause. Resident memory at rest is then the model and what is really live, which is also
//! what `server_info()` shows beside the bytes the heap has in use ([`in_use`]): a leak grows the latter, an
//! allocator's high-water mark only the former.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long no work must run before the server returns its free memory.
pub const IDLE: Duration = Duration::from_secs(1);

/// Whether work is running, since when the server is idle, and whether its free memory went back since.
pub struct IdleTrim {
    after: Duration,
    running: AtomicUsize,
    idle_since: Mutex<Instant>,
    trimmed: AtomicBool,
    trims: AtomicU64,
}

impl IdleTrim {
    /// Trims once no work has run for `after` ([`IDLE`] in the server).
    pub fn new(after: Duration) -> IdleTrim {
        IdleTrim {
            after,
            running: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            trimmed: AtomicBool::new(false),
            trims: AtomicU64::new(0),
        }
    }

    /// Marks work running until the guard drops (a batch, a rerank).
    pub fn working(&self) -> Working<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        Working(self)
    }

    /// Returns the free memory if nothing has run for `after` and it was not returned since; called by idle threads.
    /// True if it trimmed.
    pub fn poll(&self) -> bool {
        if self.running.load(Ordering::SeqCst) > 0 || self.trimmed.load(Ordering::SeqCst) {
            return false;
        }
        let idle_since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        // One caller wins the flag. Work that starts meanwhile is unaffected by the trim, and its end clears the flag.
        if idle_since.elapsed() < self.after || self.trimmed.swap(true, Ordering::SeqCst) {
            return false;
        }
        release_free_memory();
        self.trims.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// How many times the free memory went back (`server_info()`'s `idle_trims`).
    pub fn trims(&self) -> u64 {
        self.trims.load(Ordering::Relaxed)
    }
}

/// Work running; its end starts the idle time.
pub struct Working<'a>(&'a IdleTrim);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.trimmed.store(false, Ordering::SeqCst);
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only takes each arena's lock and returns whole free pages; it touches no live allocation.
    unsafe { libc::malloc_trim(0) };
}

/// Bytes the heap has handed out and not had back (glibc's arenas and its mmapped blocks, every thread's), where the
/// allocator can say.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn in_use() -> Option<u64> {
    // SAFETY: mallinfo2 takes each arena's lock in turn and only reads its statistics.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn in_use() -> Option<u64> {
    None
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_idle_period_and_never_while_working() {
        let idle = IdleTrim::new(Duration::ZERO);
        let working = idle.working();
        assert!(!idle.poll(), "trimmed while work runs");
        drop(working);
        assert!(idle.poll());
        assert!(!idle.poll(), "trimmed twice in one idle period");
        drop(idle.working());
        assert!(idle.poll(), "no trim after the next work");
        assert_eq!(idle.trims(), 2);
    }

    #[test]
    fn waits_for_the_idle_time() {
        let idle = IdleTrim::new(Duration::from_millis(200));
        let ended = Instant::now();
        drop(idle.working());
        // Polled until it trims: never before the idle time has passed since the work ended (a bound that holds
        // however late this thread runs), and it does trim.
        while !idle.poll() {
            assert!(ended.elapsed() < Duration::from_secs(30), "no trim");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(ended.elapsed() >= Duration::from_millis(200), "trimmed after {:?}", ended.elapsed());
    }
}
