//! Will the model fit? Checked before the weights are copied out of their files, because running out of memory half
//! way is not an error Rust can report: an allocation failure aborts the process, and inside PostgreSQL an aborted
//! backend restarts the whole cluster. The limits that can refuse memory are the address-space rlimit (`ulimit -v`),
//! the cgroup's `memory.max` (containers, systemd's MemoryMax) and the machine's available memory; on a GPU, the
//! device's free memory.

use candle_core::Device;

use crate::error::{Error, Result};

/// Left free beyond the weights: activations of a default batch, the tokenizer, allocator slack.
pub const HEADROOM: u64 = 256 << 20;

/// The tightest of the memory limits on this process, in bytes still available, and which limit it is.
pub fn available() -> Option<(u64, &'static str)> {
    [
        address_space_left().map(|b| (b, "the address-space limit (ulimit -v)")),
        cgroup_left().map(|b| (b, "the cgroup's memory.max")),
        mem_available().map(|b| (b, "the machine's available memory")),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(b, _)| *b)
}

/// What is left for a model on `device`: host memory limits for the CPU, free device memory for CUDA.
pub fn available_on(device: &Device) -> Option<(u64, &'static str)> {
    match device {
        Device::Cpu => available(),
        _ => gpu_memory(device).map(|(free, _)| (free, "the GPU's free memory")),
    }
}

/// (free, total) bytes of the CUDA device, or None elsewhere.
#[cfg(feature = "cuda")]
pub fn gpu_memory(device: &Device) -> Option<(u64, u64)> {
    use candle_core::cuda_backend::cudarc::driver::result::mem_get_info;
    let Device::Cuda(cuda) = device else { return None };
    cuda.cuda_stream().context().bind_to_thread().ok()?;
    mem_get_info().ok().map(|(free, total)| (free as u64, total as u64))
}

#[cfg(not(feature = "cuda"))]
pub fn gpu_memory(_device: &Device) -> Option<(u64, u64)> {
    None
}

/// A failed forward pass over `rows` × `len` tokens, as the user should see it: a CUDA allocation failure becomes
/// [`Error::GpuOutOfMemory`] naming the pass's size and the GPU's memory (SQLSTATE 53200 with a hint, where CUDA's own
/// words would only say "out of memory"); anything else is returned unchanged. The context stays usable: CUDA
/// allocation failures are not sticky errors.
pub fn explain_pass_error(err: Error, device: &Device, rows: usize, len: usize) -> Error {
    let Error::Compute(compute) = &err else { return err };
    let words = compute.to_string();
    if device.is_cpu() || !(words.contains("OUT_OF_MEMORY") || words.contains("ALLOC_FAILED")) {
        return err;
    }
    let (free, total) = gpu_memory(device).unwrap_or((0, 0));
    Error::GpuOutOfMemory { rows, len, free, total }
}

/// An error when `needed` bytes (plus [`HEADROOM`]) exceed what `available` says is left.
pub fn check(needed: u64, available: Option<(u64, &'static str)>) -> Result<()> {
    match available {
        Some((left, limit)) if needed + HEADROOM > left => {
            Err(Error::OutOfMemory { needed: needed + HEADROOM, available: left, limit: limit.into() })
        }
        _ => Ok(()),
    }
}

fn address_space_left() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    // /proc/self/statm: total program size in pages first.
    let pages: u64 = std::fs::read_to_string("/proc/self/statm").ok()?.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some(limit.rlim_cur.saturating_sub(pages * page))
}

fn cgroup_left() -> Option<u64> {
    // cgroup v2: "0::/path" in /proc/self/cgroup.
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let max: u64 = std::fs::read_to_string(dir.join("memory.max")).ok()?.trim().parse().ok()?; // "max": no limit
    let current: u64 = std::fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_memory_is_an_error_naming_the_sizes_and_the_limit() {
        assert!(check(1 << 30, None).is_ok());
        assert!(check(1 << 30, Some((2 << 30, "x"))).is_ok());
        let err = check(3 << 30, Some((2 << 30, "the cgroup's memory.max"))).unwrap_err().to_string();
        assert!(err.contains("3328 MB") && err.contains("2048 MB") && err.contains("memory.max"), "{err}");
    }

    #[test]
    fn this_process_reports_some_available_memory() {
        let (bytes, _) = available().expect("/proc/meminfo at least");
        assert!(bytes > 0);
    }
}
