//! The heap's figures and its trim, in their own test binary: resident memory and the heap are per process, and other
//! tests' allocations would blur the figures.

use std::time::Duration;

use qwen_embed_server::heap::{self, IdleTrim};

/// The tests take turns: each one's figures would count the other's allocations.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux");
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("an RssAnon line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of KiB")
}

/// 64 MiB in blocks below glibc's mmap threshold (kept in the arena when freed), with one block allocated after them
/// still live, so that free() cannot give them back by shrinking the heap's top: only the trim does.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_trim_returns_freed_heap_memory() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let blocks: Vec<Vec<u8>> = std::hint::black_box((0..4096).map(|i| vec![i as u8; 16 << 10]).collect());
    let live = std::hint::black_box(vec![1u8; 16 << 10]);
    drop(blocks);
    let before = rss_anon_kib();
    let idle = IdleTrim::new(Duration::ZERO);
    assert!(idle.poll());
    let after = rss_anon_kib();
    assert!(before.saturating_sub(after) > 48 << 10, "RssAnon {before} KiB before the trim, {after} KiB after");
    assert_eq!(live[0], 1);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_bytes_in_use_follow_allocations_small_and_large() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let before = heap::in_use().expect("glibc reports its heap");
    // black_box: an allocation that is never read may be optimised away.
    let small: Vec<Vec<u8>> = std::hint::black_box((0..1024).map(|i| vec![i as u8; 1 << 10]).collect()); // arena chunks
    let large = std::hint::black_box(vec![1u8; 64 << 20]); // an mmapped block
    let during = heap::in_use().unwrap();
    assert!(during - before >= (64 << 20) + (1 << 20), "{before} → {during} bytes in use");
    drop((small, large));
    let after = heap::in_use().unwrap();
    assert!(after < before + (64 << 10), "{before} → {after} bytes in use after freeing");
}
