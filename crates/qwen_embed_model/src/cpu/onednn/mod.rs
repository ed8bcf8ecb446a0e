//! Linear layers on oneDNN's matmul (Debian's `libdnnl`: 2.6 on Debian 12, 3.7 on Debian 13), for CPUs where it has a
//! brgemm kernel: in bf16 on AMX (Sapphire Rapids and later) or AVX512-BF16 (Zen 4, Cooper Lake), in f32 on other
//! AVX-512 CPUs (Skylake-SP to Ice Lake). oneDNN is what PyTorch runs there; its kernels are generated at run time for
//! the CPU found and tuned by the CPU's maker, which our own hand-written kernels for instructions our development
//! machines lack could not be.
//!
//! The glue is generic over the element type ([`Element`]: `f32` or [`Bf16`]), so the f32 instantiation tests the
//! same packing, primitive cache, slicing, scratchpads and threading on any x86-64 CPU; the bf16 one runs where the CPU
//! has the instructions. Only a real bf16 kernel is accepted (an implementation named `brg:…`): on AVX-512 CPUs without
//! BF16 oneDNN would emulate bf16 at a fraction of f32 speed, and on AVX2 it has none. There its f32 brgemm is the
//! fast path ([`f32_brgemm`]); on AVX2 our own f16-weight kernel is as fast as oneDNN's f32 (`precision`).
//!
//! How it runs:
//! - **Weights packed once.** The (out × in) weight matrix is cut into column slices of [`SLICE`] output features;
//!   each slice is reordered at load into the layout oneDNN's primitive asks for (`format_tag any`).
//! - **Work on the rayon pool, not OpenMP.** A call is a grid of (slice, block of [`ROW_BLOCK`] rows) tasks on the
//!   caller's rayon pool; each task runs a primitive single-threaded. oneDNN's OpenMP is told one thread on every
//!   thread that calls it ([`single_threaded`]), so no OpenMP team is ever started: the pool's size
//!   (`qwen_embed.threads`, `server_threads`) is the only thread count, the model server's two batch threads share it,
//!   no idle OpenMP thread spins beside rayon's, signals stay with the threads PostgreSQL expects, and nothing is
//!   started before the model server's fork. Cancellation is unchanged: the encoder checks between layers.
//! - **Primitives cached** per (element type, rows, in, slice width, output stride), once per process, and made at
//!   packing: rows are a multiple of [`ROW_STEP`] up to [`ROW_BLOCK`], so a shape has a fixed few primitives,
//!   shared by every layer of that shape, and the process's memory does not grow with the lengths it meets.
//! - **A scratchpad per thread.** oneDNN's default scratchpad is one buffer shared by all primitives (Debian builds it
//!   without `DNNL_ENABLE_CONCURRENT_EXEC`), which concurrent tasks would race on: every primitive is made with a user
//!   scratchpad, and each execution brings its thread's own.
//! - **Blocks written in place where oneDNN can.** oneDNN 3.6 and later write a task's block straight into the output
//!   (a strided destination). oneDNN 2.6's brgemm writes only a dense output (a wider row stride sends it to the
//!   reference implementation), so there each task computes its m × slice block in a buffer of its thread and copies
//!   it into the output. The residual add and SwiGLU ride on that copy on both ([`Matmul::matmul_add`],
//!   [`Matmul::matmul_silu_gate`]): a sum post-op would need the residual copied into the block first, one more pass
//!   than adding it on the way out.

// The thin layer over the C API of the oneDNN this build found (build.rs): the calls and types that differ between
// 2.x and 3.x; everything below is the same for both.
#[cfg(onednn_api = "2")]
#[path = "api_v2.rs"]
mod api;
#[cfg(onednn_api = "3")]
#[path = "api_v3.rs"]
mod api;

use api::{ffi, Md};

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CStr;
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::elementwise::{silu_mul_rows, to_bf16};
use crate::panels::SharedOut;
use crate::profile::{timed, Part};

/// Output features per slice: one task's columns. Four of the brgemm kernels' 64-column blocks.
pub const SLICE: usize = 256;
/// Rows per task at most. 64 rows × 256 columns × 1,024 inputs is 34 MFLOP, tens of microseconds: the few microseconds
/// a primitive call costs stay small beside it.
pub const ROW_BLOCK: usize = 64;
/// A task's rows are a multiple of this: a call's last row block, where shorter, is computed from a copy of its rows
/// padded with zeros and only its real rows kept. So a (k, n) shape has `ROW_BLOCK / ROW_STEP` primitives, all made
/// when the weights are packed, rather than one per row count a long-running server happens to meet (its memory would
/// grow with the mix of lengths for hours), and a query of a new length never waits for a kernel to be generated. At
/// most `ROW_STEP - 1` rows are wasted, and only in a call's last block.
pub const ROW_STEP: usize = 4;

/// A failure inside oneDNN: which call, and its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("oneDNN: {call} failed ({status})")]
pub struct Error {
    call: &'static str,
    status: &'static str,
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        crate::Error::compute(e.to_string())
    }
}

fn check(call: &'static str, status: ffi::dnnl_status_t) -> Result<()> {
    let status = match status {
        ffi::dnnl_status_t_dnnl_success => return Ok(()),
        ffi::dnnl_status_t_dnnl_out_of_memory => "out of memory",
        ffi::dnnl_status_t_dnnl_invalid_arguments => "invalid arguments",
        ffi::dnnl_status_t_dnnl_unimplemented => "unimplemented",
        ffi::dnnl_status_t_dnnl_runtime_error => "runtime error",
        _ => "error",
    };
    Err(Error { call, status })
}

/// An element type the glue computes in: what the activations are converted to and the weights are reordered to.
pub trait Element: Copy + Default + Send + Sync + 'static {
    const DATA_TYPE: ffi::dnnl_data_type_t;
    /// Whether oneDNN's implementation of a matmul in this type is one we accept.
    fn accepts(implementation: &str) -> bool;
    /// The activations in this type (borrowed where they already are).
    fn activations(x: &[f32]) -> Cow<'_, [Self]>;
    /// `xs` in this type (rounded to nearest even).
    fn convert(xs: &[f32], out: &mut [Self]);
}

impl Element for f32 {
    const DATA_TYPE: ffi::dnnl_data_type_t = ffi::dnnl_data_type_t_dnnl_f32;
    /// Any but the reference implementation (a slow loop: a sign the glue asked for something oneDNN cannot do fast).
    fn accepts(implementation: &str) -> bool {
        !implementation.starts_with("ref:")
    }
    fn activations(x: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(x)
    }
    fn convert(xs: &[f32], out: &mut [f32]) {
        out.copy_from_slice(xs);
    }
}

/// A bf16 value's bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Element for Bf16 {
    const DATA_TYPE: ffi::dnnl_data_type_t = ffi::dnnl_data_type_t_dnnl_bf16;
    /// brgemm on AMX or AVX512-BF16 only, never an emulation: `brg:avx512_core_amx`, `brg:avx512_core_bf16` (2.x),
    /// `brg_matmul:…` (3.x's name for the same).
    fn accepts(implementation: &str) -> bool {
        is_brgemm(implementation) && (implementation.contains("amx") || implementation.contains("bf16"))
    }
    fn activations(x: &[f32]) -> Cow<'_, [Bf16]> {
        let mut out = vec![Bf16::default(); x.len()];
        out.par_chunks_mut(4096).zip(x.par_chunks(4096)).for_each(|(d, s)| Bf16::convert(s, d));
        Cow::Owned(out)
    }
    fn convert(xs: &[f32], out: &mut [Bf16]) {
        // SAFETY: Bf16 is a transparent wrapper of u16: same size, alignment and validity.
        let bits = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u16>(), out.len()) };
        to_bf16(xs, bits);
    }
}

/// What a linear layer on oneDNN computes in: bf16 (the product's kernel, where oneDNN has one for this CPU) or f32
/// (any x86-64 CPU: the glue's check where bf16 cannot run, held to the f32 reference like every f32 path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    F32,
    Bf16(Bf16Kernel),
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::F32 => "onednn f32",
            Kernel::Bf16(k) => k.name(),
        }
    }
}

/// A weight matrix packed for [`Kernel`]'s element type.
pub enum Packed {
    F32(Matmul<f32>),
    Bf16(Matmul<Bf16>),
}

impl Packed {
    pub fn pack(kernel: Kernel, weights: &[f32], out_features: usize, in_features: usize) -> Result<Packed> {
        Ok(match kernel {
            Kernel::F32 => Packed::F32(Matmul::pack(weights, out_features, in_features)?),
            Kernel::Bf16(_) => Packed::Bf16(Matmul::pack(weights, out_features, in_features)?),
        })
    }

    /// [`Matmul::pack_gated`].
    pub fn pack_gated(kernel: Kernel, weights: &[f32], out_features: usize, in_features: usize) -> Result<Packed> {
        Ok(match kernel {
            Kernel::F32 => Packed::F32(Matmul::pack_gated(weights, out_features, in_features)?),
            Kernel::Bf16(_) => Packed::Bf16(Matmul::pack_gated(weights, out_features, in_features)?),
        })
    }

    /// (in_features, out_features).
    pub fn features(&self) -> (usize, usize) {
        match self {
            Packed::F32(m) => (m.in_features, m.out_features),
            Packed::Bf16(m) => (m.in_features, m.out_features),
        }
    }

    /// [`Matmul::matmul`].
    pub fn matmul(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        match self {
            Packed::F32(m) => m.matmul(x, rows),
            Packed::Bf16(m) => m.matmul(x, rows),
        }
    }

    /// [`Matmul::matmul_add`].
    pub fn matmul_add(&self, x: &[f32], rows: usize, residual: &[f32]) -> Result<Vec<f32>> {
        match self {
            Packed::F32(m) => m.matmul_add(x, rows, residual),
            Packed::Bf16(m) => m.matmul_add(x, rows, residual),
        }
    }

    /// [`Matmul::matmul_silu_gate`].
    pub fn matmul_silu_gate(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        match self {
            Packed::F32(m) => m.matmul_silu_gate(x, rows),
            Packed::Bf16(m) => m.matmul_silu_gate(x, rows),
        }
    }
}

/// The version of the oneDNN library loaded ("3.7.2"), as `info()` and the benchmarks report it beside the kernel.
pub fn version() -> String {
    // SAFETY: returns a pointer to a static struct of the library.
    let v = unsafe { &*ffi::dnnl_version() };
    format!("{}.{}.{}", v.major, v.minor, v.patch)
}

/// The bf16 kernel oneDNN runs on this CPU, found once by asking it for a bf16 matmul and reading the implementation's
/// name; `None` where it has no brgemm for bf16 (or `cpu::level()` is capped below AVX512-BF16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Kernel {
    amx: bool,
}

impl Bf16Kernel {
    /// As `info()`, `server_info()` and the benchmarks name it.
    pub fn name(self) -> &'static str {
        if self.amx {
            "onednn amx"
        } else {
            "onednn avx512_core_bf16"
        }
    }
}

/// Whether oneDNN runs f32 matmuls on its AVX-512 brgemm here (`brg:avx512_core`, `brg_matmul:avx512_core`): false
/// below `cpu::Level::Avx512` (our AVX2 kernel is as fast as oneDNN's f32 there, and its f16 weights stream half
/// the bytes).
pub fn f32_brgemm() -> bool {
    static BRGEMM: OnceLock<bool> = OnceLock::new();
    *BRGEMM.get_or_init(|| {
        crate::cpu::level() >= crate::cpu::Level::Avx512
            && implementation::<f32>(32, 64, 64).is_ok_and(|n| is_brgemm(&n))
    })
}

fn is_brgemm(implementation: &str) -> bool {
    implementation.starts_with("brg:") || implementation.starts_with("brg_matmul:")
}

/// See [`Bf16Kernel`].
pub fn bf16_kernel() -> Option<Bf16Kernel> {
    static KERNEL: OnceLock<Option<Bf16Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        if crate::cpu::level() < crate::cpu::Level::Avx512Bf16 {
            return None;
        }
        let name = implementation::<Bf16>(32, 64, 64).ok()?;
        Bf16::accepts(&name).then(|| Bf16Kernel { amx: name.contains("amx") })
    })
}

/// The implementation oneDNN picks for an `rows` × `k` by `k` × `n` matmul in `T` (weights in the layout it prefers).
pub fn implementation<T: Element>(rows: usize, k: usize, n: usize) -> Result<String> {
    single_threaded();
    let weights = md_by_tag(T::DATA_TYPE, k, n, ffi::dnnl_format_tag_t_dnnl_format_tag_any)?;
    Ok(matmul_pd(T::DATA_TYPE, (rows, k, n), &weights, n)?.implementation())
}

/// Tells OpenMP (oneDNN's threading runtime in Debian's build) that this thread computes alone: oneDNN then runs its
/// primitives on the calling thread and never starts a team. Once per thread; before a thread's first primitive.
fn single_threaded() {
    thread_local! { static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }
    if !DONE.get() {
        // SAFETY: sets this thread's OpenMP nthreads-var; no memory is passed.
        unsafe { ffi::omp_set_num_threads(1) };
        DONE.set(true);
    }
}

/// The CPU engine, made once per process. `QWEN_EMBED_CPU_KERNEL` (see `cpu`) caps oneDNN at the same level: below
/// AMX, below AVX512-BF16 or below AVX-512; the cap must be set before oneDNN generates its first kernel.
fn engine() -> Result<ffi::dnnl_engine_t> {
    struct Engine(ffi::dnnl_engine_t);
    // SAFETY: a oneDNN engine is thread-safe; it lives as long as the process (never destroyed).
    unsafe impl Send for Engine {}
    unsafe impl Sync for Engine {}
    static ENGINE: OnceLock<std::result::Result<Engine, Error>> = OnceLock::new();
    let made = ENGINE.get_or_init(|| {
        use crate::cpu::Level;
        let cap = match crate::cpu::level() {
            Level::Avx2 => Some(ffi::dnnl_cpu_isa_t_dnnl_cpu_isa_avx2),
            Level::Avx512 => Some(ffi::dnnl_cpu_isa_t_dnnl_cpu_isa_avx512_core),
            Level::Avx512Bf16 => Some(ffi::dnnl_cpu_isa_t_dnnl_cpu_isa_avx512_core_bf16),
            Level::Generic | Level::Amx => None,
        };
        if let Some(isa) = cap {
            // SAFETY: a plain call with an enum value, made before any primitive exists. An error (the ISA was
            // already fixed) leaves oneDNN as it was.
            unsafe { ffi::dnnl_set_max_cpu_isa(isa) };
        }
        let mut engine = ptr::null_mut();
        // SAFETY: writes the new engine's handle through a valid pointer.
        check("dnnl_engine_create", unsafe {
            ffi::dnnl_engine_create(&mut engine, ffi::dnnl_engine_kind_t_dnnl_cpu, 0)
        })?;
        Ok(Engine(engine))
    });
    made.as_ref().map(|e| e.0).map_err(Clone::clone)
}

/// Runs `f` with this thread's stream (a oneDNN stream must not be used by two threads at once).
fn with_stream<R>(f: impl FnOnce(ffi::dnnl_stream_t) -> Result<R>) -> Result<R> {
    struct Stream(ffi::dnnl_stream_t);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: the stream was made by dnnl_stream_create and is used by this thread alone.
            unsafe { ffi::dnnl_stream_destroy(self.0) };
        }
    }
    thread_local! { static STREAM: std::cell::OnceCell<Stream> = const { std::cell::OnceCell::new() }; }
    let engine = engine()?;
    STREAM.with(|cell| {
        if cell.get().is_none() {
            let mut stream = ptr::null_mut();
            // SAFETY: writes the new stream's handle through a valid pointer; the engine outlives it.
            check("dnnl_stream_create", unsafe {
                ffi::dnnl_stream_create(&mut stream, engine, ffi::dnnl_stream_flags_t_dnnl_stream_default_flags)
            })?;
            let _ = cell.set(Stream(stream));
        }
        f(cell.get().expect("set above").0)
    })
}

/// A 2-D memory descriptor (rows × cols) with a format tag.
fn md_by_tag(dt: ffi::dnnl_data_type_t, rows: usize, cols: usize, tag: ffi::dnnl_format_tag_t) -> Result<Md> {
    Md::by_tag(dt, [rows as ffi::dnnl_dim_t, cols as ffi::dnnl_dim_t], tag)
}

/// A 2-D memory descriptor with explicit strides (elements).
fn md_by_strides(dt: ffi::dnnl_data_type_t, rows: usize, cols: usize, strides: [usize; 2]) -> Result<Md> {
    Md::by_strides(dt, [rows as ffi::dnnl_dim_t, cols as ffi::dnnl_dim_t], strides.map(|s| s as ffi::dnnl_dim_t))
}

/// An f32 output of rows × n whose rows are `ldc` floats apart (n: dense).
fn dst_md(rows: usize, n: usize, ldc: usize) -> Result<Md> {
    match ldc == n {
        true => md_by_tag(ffi::dnnl_data_type_t_dnnl_f32, rows, n, ffi::dnnl_format_tag_t_dnnl_ab),
        false => md_by_strides(ffi::dnnl_data_type_t_dnnl_f32, rows, n, [ldc, 1]),
    }
}

/// A primitive descriptor (freed on drop).
struct Pd(ffi::dnnl_primitive_desc_t);

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: made by dnnl_primitive_desc_create and not shared.
        unsafe { ffi::dnnl_primitive_desc_destroy(self.0) };
    }
}

impl Pd {
    fn implementation(&self) -> String {
        let mut name: *const std::os::raw::c_char = ptr::null();
        // SAFETY: the query writes a pointer to a C string owned by the descriptor, read before the descriptor drops.
        let status = unsafe {
            ffi::dnnl_primitive_desc_query(
                self.0,
                ffi::dnnl_query_t_dnnl_query_impl_info_str,
                0,
                &mut name as *mut _ as *mut std::ffi::c_void,
            )
        };
        if status != ffi::dnnl_status_t_dnnl_success || name.is_null() {
            return String::from("unknown");
        }
        // SAFETY: a NUL-terminated string owned by the descriptor, alive here.
        unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
    }

    /// A memory descriptor of the primitive's (`what`: the weights', the scratchpad's).
    fn query_md(&self, what: ffi::dnnl_query_t) -> Result<Md> {
        // SAFETY: the query returns a descriptor owned by this primitive descriptor (alive here), copied at once.
        unsafe { Md::copy_of(ffi::dnnl_primitive_desc_query_md(self.0, what, 0)) }
    }

    /// The weights' memory descriptor the primitive expects.
    fn weights_md(&self) -> Result<Md> {
        self.query_md(ffi::dnnl_query_t_dnnl_query_weights_md)
    }

    fn primitive(&self) -> Result<Primitive> {
        let scratchpad = self.query_md(ffi::dnnl_query_t_dnnl_query_scratchpad_md)?;
        let mut p = ptr::null_mut();
        // SAFETY: writes the new primitive's handle; the descriptor is valid.
        check("dnnl_primitive_create", unsafe { ffi::dnnl_primitive_create(&mut p, self.0) })?;
        Ok(Primitive(p, scratchpad))
    }
}

/// A matmul's primitive descriptor: `rows` × k (plain, row-major) times `weights` (k × n), an f32 output whose rows
/// are `ldc` floats apart (n: dense). oneDNN 2.6's brgemm takes only a dense output (given a wider row stride it falls
/// back to its reference implementation, which [`Element::accepts`] refuses); 3.6 and later take a strided one.
fn matmul_pd(dt: ffi::dnnl_data_type_t, (rows, k, n): (usize, usize, usize), weights: &Md, ldc: usize) -> Result<Pd> {
    let src = md_by_tag(dt, rows, k, ffi::dnnl_format_tag_t_dnnl_ab)?;
    let dst = dst_md(rows, n, ldc)?;
    let mut pd = ptr::null_mut();
    let attr = Attr::user_scratchpad()?;
    // SAFETY: writes the new descriptor's handle; every descriptor and the attributes are valid for the call (the
    // primitive descriptor keeps copies).
    check("matmul primitive descriptor", unsafe {
        api::matmul_primitive_desc_create(&mut pd, engine()?, (&src, weights, &dst), attr.0)
    })?;
    Ok(Pd(pd))
}

/// Attributes asking for a user-managed scratchpad. oneDNN's default scratchpad is one buffer common to all
/// primitives (Debian builds it without `DNNL_ENABLE_CONCURRENT_EXEC`): two threads executing at once would compute
/// in the same temporary memory. With a user scratchpad each execution brings its thread's own ([`execute`]).
struct Attr(ffi::dnnl_primitive_attr_t);

impl Attr {
    fn user_scratchpad() -> Result<Attr> {
        let mut attr = ptr::null_mut();
        // SAFETY: writes the new attribute handle, owned by the returned value.
        check("dnnl_primitive_attr_create", unsafe { ffi::dnnl_primitive_attr_create(&mut attr) })?;
        let attr = Attr(attr);
        // SAFETY: a valid attribute handle and an enum value.
        check("dnnl_primitive_attr_set_scratchpad_mode", unsafe {
            ffi::dnnl_primitive_attr_set_scratchpad_mode(attr.0, ffi::dnnl_scratchpad_mode_t_dnnl_scratchpad_mode_user)
        })?;
        Ok(attr)
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: made by dnnl_primitive_attr_create; primitive descriptors keep their own copy.
        unsafe { ffi::dnnl_primitive_attr_destroy(self.0) };
    }
}

/// A primitive, executed concurrently by the pool's threads (oneDNN primitives are thread-safe to execute), with the
/// scratchpad it needs.
struct Primitive(ffi::dnnl_primitive_t, Md);

// SAFETY: oneDNN documents primitives as immutable after creation and safe to execute from several threads, each
// with its own stream and memory objects, which is how `execute` uses them.
unsafe impl Send for Primitive {}
unsafe impl Sync for Primitive {}

impl Drop for Primitive {
    fn drop(&mut self) {
        // SAFETY: made by dnnl_primitive_create; dropped only when no thread executes it (the cache owns it).
        unsafe { ffi::dnnl_primitive_destroy(self.0) };
    }
}

/// A memory object over a buffer we own (oneDNN neither allocates nor frees it).
struct Memory(ffi::dnnl_memory_t);

impl Memory {
    /// # Safety
    /// `data` must hold `md.size()` bytes and outlive the memory object's use.
    unsafe fn over(md: &Md, data: *mut std::ffi::c_void) -> Result<Memory> {
        let mut m = ptr::null_mut();
        check("dnnl_memory_create", ffi::dnnl_memory_create(&mut m, md.as_ref(), engine()?, data))?;
        Ok(Memory(m))
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: made by dnnl_memory_create; the buffer is ours, so destroying it frees only the handle.
        unsafe { ffi::dnnl_memory_destroy(self.0) };
    }
}

fn arg(arg: u32, memory: &Memory) -> ffi::dnnl_exec_arg_t {
    ffi::dnnl_exec_arg_t { arg: arg as i32, memory: memory.0 }
}

/// Executes `p` on this thread with the given arguments and this thread's scratchpad.
fn execute(p: &Primitive, args: &[ffi::dnnl_exec_arg_t]) -> Result<()> {
    thread_local! {
        /// Each thread's scratchpad, grown to the largest a primitive asked for.
        static SCRATCHPAD: std::cell::RefCell<Vec<Align64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCHPAD.with_borrow_mut(|scratchpad| {
        let size = p.1.size();
        if scratchpad.len() * 64 < size {
            scratchpad.resize(size.div_ceil(64), Align64([0; 64]));
        }
        // SAFETY: the buffer holds at least the scratchpad's size and is this thread's alone for the call.
        let memory = unsafe { Memory::over(&p.1, scratchpad.as_mut_ptr().cast())? };
        let args: Vec<_> = args.iter().copied().chain([arg(ffi::DNNL_ARG_SCRATCHPAD, &memory)]).collect();
        with_stream(|stream| {
            // SAFETY: the primitive and every memory object in `args` are valid for the call, which returns when
            // done (CPU streams run in order, synchronously).
            check("dnnl_primitive_execute", unsafe {
                ffi::dnnl_primitive_execute(p.0, stream, args.len() as i32, args.as_ptr())
            })
        })
    })
}

/// Key of the process-wide primitive cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    dt: ffi::dnnl_data_type_t,
    rows: usize,
    k: usize,
    n: usize,
    /// The weights' layout: packed at load (`None`: the one oneDNN chose for this shape) or plain.
    plain: Option<Rhs>,
    /// The output's row stride (floats; n: dense).
    ldc: usize,
}

/// The process's primitives. Bounded by the shapes of the models loaded: a linear shape's are made at packing
/// ([`ROW_STEP`]), the attention's are few per head shape (its queries and keys come in steps too).
static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Primitive>>>> = OnceLock::new();

/// The primitive for `key` whose weights are in `weights`' layout, made on first use.
fn primitive<T: Element>(key: Key, weights: &Md) -> Result<Arc<Primitive>> {
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(p.clone());
    }
    // Made outside the lock (generating a kernel takes a while); a race makes it twice and keeps one.
    let pd = matmul_pd(key.dt, (key.rows, key.k, key.n), weights, key.ldc)?;
    // The layout is the one the weights were reordered to (checked at load): an implementation we would not accept
    // here would be a oneDNN that changed its mind between row counts.
    if !T::accepts(&pd.implementation()) {
        return Err(Error { call: "matmul", status: "no accepted implementation for this row count" });
    }
    let made = Arc::new(pd.primitive()?);
    Ok(cache.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(made).clone())
}

/// How the right operand of a [`product`] lies in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rhs {
    /// k × n, row-major (P · V: keys × head dims).
    RowMajor,
    /// Its transpose, n × k row-major (Q · Kᵀ: K stored keys × head dims).
    Transposed,
}

/// `dst` (m × n, row-major f32) = `a` (m × k, row-major) · `b` (k × n, laid out as `rhs` says), in `T`, on this thread:
/// the attention's products, whose right operand changes with every call (no packing at load). oneDNN's brgemm copies
/// it into its own layout inside the call, as PyTorch's eager bf16 matmuls do. Primitives are cached by shape.
pub fn product<T: Element>(m: usize, k: usize, n: usize, a: &[T], b: &[T], rhs: Rhs, dst: &mut [f32]) -> Result<()> {
    assert!(a.len() >= m * k && b.len() >= k * n && dst.len() >= m * n);
    let tag = match rhs {
        Rhs::RowMajor => ffi::dnnl_format_tag_t_dnnl_ab,
        Rhs::Transposed => ffi::dnnl_format_tag_t_dnnl_ba,
    };
    let weights = md_by_tag(T::DATA_TYPE, k, n, tag)?;
    // SAFETY: `a` and `b` hold the m × k and k × n elements their descriptors describe (asserted above) and are only
    // read; `dst` holds m × n floats; all outlive the call.
    unsafe {
        matmul_on_thread::<T>((m, k, n), Some(rhs), a.as_ptr(), (&weights, b.as_ptr().cast()), (dst.as_mut_ptr(), n))
    }
}

/// dst (m × n f32, rows `ldc` floats apart) = src (m × k, row-major, in `T`) · the weights (k × n in `weights`'
/// layout: packed at load when `plain` is `None`), on this thread, with the primitive cached for that shape, layout
/// and output stride.
///
/// # Safety
/// `src` must hold m × k elements and the weights `weights.0.size()` bytes, both only read; `dst` (m - 1) × ldc + n
/// floats, written only where the m × n output lies; all valid for the call.
unsafe fn matmul_on_thread<T: Element>(
    (m, k, n): (usize, usize, usize),
    plain: Option<Rhs>,
    src: *const T,
    weights: (&Md, *const std::ffi::c_void),
    (dst, ldc): (*mut f32, usize),
) -> Result<()> {
    single_threaded();
    let p = primitive::<T>(Key { dt: T::DATA_TYPE, rows: m, k, n, plain, ldc }, weights.0)?;
    let src_md = md_by_tag(T::DATA_TYPE, m, k, ffi::dnnl_format_tag_t_dnnl_ab)?;
    let dst_md = dst_md(m, n, ldc)?;
    // oneDNN takes mutable pointers for every argument; it only reads the source and the weights.
    let src = Memory::over(&src_md, src as *mut std::ffi::c_void)?;
    let wei = Memory::over(weights.0, weights.1 as *mut std::ffi::c_void)?;
    let dst = Memory::over(&dst_md, dst.cast())?;
    execute(&p, &[arg(ffi::DNNL_ARG_SRC, &src), arg(ffi::DNNL_ARG_WEIGHTS, &wei), arg(ffi::DNNL_ARG_DST, &dst)])
}

/// One slice of output features, its weights in the primitive's layout.
struct Slice {
    /// First output feature.
    start: usize,
    n: usize,
    md: Md,
    /// `md.size()` bytes, 64-byte aligned.
    data: Vec<Align64>,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

/// `y = x · Wᵀ` on oneDNN, in element type `T`, with W packed at load; or, packed by [`Matmul::pack_gated`], SwiGLU
/// of a gate and an up projection.
pub struct Matmul<T: Element> {
    in_features: usize,
    out_features: usize,
    slices: Vec<Slice>,
    /// Packed by [`Matmul::pack_gated`]: each slice is a block of gate features beside the same block of up features.
    gated: bool,
    /// Whether a slice's block of the product is written straight into the output (rows out_features apart): with one
    /// slice (the block is dense), or where oneDNN's accepted kernel takes a strided output (3.6 and later). Else
    /// (2.x) a dense block is computed and copied into place.
    direct_out: bool,
    implementation: String,
    _element: std::marker::PhantomData<T>,
}

impl<T: Element> Matmul<T> {
    /// `weights` holds the (out_features × in_features) matrix row-major in f32; it is reordered (and converted to `T`)
    /// into the layout oneDNN's primitive prefers. Fails when oneDNN has no implementation `T` accepts.
    pub fn pack(weights: &[f32], out_features: usize, in_features: usize) -> Result<Self> {
        assert_eq!(weights.len(), out_features * in_features);
        let widths = (0..out_features).step_by(SLICE).map(|start| SLICE.min(out_features - start));
        Self::pack_slices(weights, in_features, widths, false)
    }

    /// For [`Matmul::matmul_silu_gate`]: `weights` holds the gate projection's (inter × in_features) rows, then the up
    /// projection's (inter × in_features), row-major f32 (`out_features` = 2 × inter). Each slice holds up to
    /// `SLICE / 2` gate features and the same up features, so one task's block has both halves of its outputs.
    pub fn pack_gated(weights: &[f32], out_features: usize, in_features: usize) -> Result<Self> {
        assert_eq!(weights.len(), out_features * in_features);
        assert_eq!(out_features % 2, 0, "gate and up projections of equal width");
        let inter = out_features / 2;
        let (gate, up) = weights.split_at(inter * in_features);
        let blocks = || (0..inter).step_by(SLICE / 2).map(|j| (j, (SLICE / 2).min(inter - j)));
        let mut paired = Vec::with_capacity(weights.len());
        for (j, w) in blocks() {
            paired.extend_from_slice(&gate[j * in_features..(j + w) * in_features]);
            paired.extend_from_slice(&up[j * in_features..(j + w) * in_features]);
        }
        Self::pack_slices(&paired, in_features, blocks().map(|(_, w)| 2 * w), true)
    }

    /// Packs consecutive row ranges of `weights` (out × in_features, row-major) of the given widths, one slice each.
    fn pack_slices(
        weights: &[f32],
        in_features: usize,
        widths: impl Iterator<Item = usize>,
        gated: bool,
    ) -> Result<Self> {
        single_threaded();
        let out_features = weights.len() / in_features;
        let mut slices = Vec::with_capacity(out_features.div_ceil(SLICE));
        let mut implementation = String::new();
        let mut start = 0;
        for n in widths {
            let any = md_by_tag(T::DATA_TYPE, in_features, n, ffi::dnnl_format_tag_t_dnnl_format_tag_any)?;
            let pd = matmul_pd(T::DATA_TYPE, (ROW_BLOCK, in_features, n), &any, n)?;
            implementation = pd.implementation();
            if !T::accepts(&implementation) {
                return Err(Error { call: "matmul", status: "no accepted implementation" });
            }
            let md = pd.weights_md()?;
            let mut data = vec![Align64([0; 64]); md.size().div_ceil(64)];
            // The slice's rows of W, viewed as k × n: element (k, j) at (start + j) × in + k.
            let plain = md_by_strides(ffi::dnnl_data_type_t_dnnl_f32, in_features, n, [1, in_features])?;
            let src = weights[start * in_features..][..n * in_features].as_ptr() as *mut std::ffi::c_void;
            // SAFETY: `src` holds the slice's n rows of in_features floats (read only, though the API takes a mutable
            // pointer); `data` holds md.size() bytes; both outlive the reorder.
            unsafe {
                let (from, to) = (Memory::over(&plain, src)?, Memory::over(&md, data.as_mut_ptr().cast())?);
                reorder(&plain, &md, &from, &to)?;
            }
            slices.push(Slice { start, n, md, data });
            start += n;
        }
        assert_eq!(start, out_features, "the slices cover the output features");
        // A strided output, where the kernel oneDNN gives for it is one we accept (3.6+: the same brgemm), for both
        // slice widths there are (every slice but the last is SLICE wide).
        let direct_out = match &slices[..] {
            [] | [_] => true,
            [first, .., last] => {
                let accepted = |slice: &Slice| -> Result<bool> {
                    let pd = matmul_pd(T::DATA_TYPE, (ROW_BLOCK, in_features, slice.n), &slice.md, out_features)?;
                    Ok(T::accepts(&pd.implementation()))
                };
                accepted(first)? && accepted(last)?
            }
        };
        let matmul = Matmul {
            in_features,
            out_features,
            slices,
            gated,
            direct_out,
            implementation,
            _element: std::marker::PhantomData,
        };
        matmul.make_primitives()?;
        Ok(matmul)
    }

    /// Makes every primitive [`Matmul::compute`] can ask for (cached: layers of one shape share them), so none is made
    /// while a request waits: each slice width at every task row count, into a dense block and, where blocks are
    /// written in place, into the output's rows.
    fn make_primitives(&self) -> Result<()> {
        let (k, out) = (self.in_features, self.out_features);
        let strides = |n| if self.direct_out && !self.gated { vec![n, out] } else { vec![n] };
        let mut widths: Vec<&Slice> = self.slices.iter().collect();
        widths.dedup_by_key(|slice| slice.n);
        for slice in widths {
            for ldc in strides(slice.n) {
                for rows in (ROW_STEP..=ROW_BLOCK).step_by(ROW_STEP) {
                    primitive::<T>(Key { dt: T::DATA_TYPE, rows, k, n: slice.n, plain: None, ldc }, &slice.md)?;
                }
            }
        }
        Ok(())
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// oneDNN's name for the implementation (`brg:avx512_core_amx`, …).
    pub fn implementation(&self) -> &str {
        &self.implementation
    }

    /// `x` is rows × in_features (row-major); returns rows × out_features.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.compute(x, rows, CopyOut::Store)
    }

    /// `residual + x · Wᵀ` (residual is rows × out_features), the add done as the result is copied into place.
    pub fn matmul_add(&self, x: &[f32], rows: usize, residual: &[f32]) -> Result<Vec<f32>> {
        assert_eq!(residual.len(), rows * self.out_features);
        self.compute(x, rows, CopyOut::Add(residual))
    }

    /// SwiGLU, `silu(x · Gᵀ) · (x · Uᵀ)` (rows × out_features / 2), with the weights packed by [`Matmul::pack_gated`]:
    /// applied as each block is copied out, so the product of both projections is never written whole.
    pub fn matmul_silu_gate(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.compute(x, rows, CopyOut::SiluGate)
    }

    /// x · Wᵀ, and what `copy` says to do with each block. The output is not zeroed first (tens of megabytes a layer
    /// for a long batch): every element is written by exactly one task before its length is set.
    fn compute(&self, x: &[f32], rows: usize, copy: CopyOut) -> Result<Vec<f32>> {
        assert_eq!(x.len(), rows * self.in_features);
        assert_eq!(self.gated, matches!(copy, CopyOut::SiluGate), "SwiGLU needs, and only it takes, gated packing");
        let a = timed(Part::Elementwise, || T::activations(x));
        let k = self.in_features;
        // The last row block's rows, padded with zeros to a whole number of ROW_STEPs where they are not one.
        let last = (rows.max(1) - 1) / ROW_BLOCK * ROW_BLOCK;
        let tail: Option<Vec<T>> = (!(rows - last).is_multiple_of(ROW_STEP)).then(|| {
            let mut padded = a[last * k..].to_vec();
            padded.resize((rows - last).next_multiple_of(ROW_STEP) * k, T::default());
            padded
        });
        // A gated slice of n columns gives n / 2 outputs, after those of the slices before it.
        let (ldc, half) = if self.gated { (self.out_features / 2, 2) } else { (self.out_features, 1) };
        let mut out: Vec<f32> = Vec::with_capacity(rows * ldc);
        let shared = SharedOut(out.as_mut_ptr());
        // Slice-major: a thread's consecutive tasks mostly share one slice of weights (kept in its cache).
        let tasks: Vec<(usize, usize)> =
            (0..self.slices.len()).flat_map(|s| (0..rows).step_by(ROW_BLOCK).map(move |r| (s, r))).collect();
        timed(Part::Linear, || {
            tasks.into_par_iter().try_for_each(|(s, r0)| {
                let shared = &shared; // the whole Sync wrapper, not its raw pointer field
                let slice = &self.slices[s];
                let (m, width) = (ROW_BLOCK.min(rows - r0), slice.n / half);
                // The rows the primitive computes (m, or the padded tail's), from where.
                let (m_task, src) = match &tail {
                    Some(padded) if r0 == last => (padded.len() / k, padded.as_ptr()),
                    _ => (m, a[r0 * k..].as_ptr()),
                };
                let weights = (&slice.md, slice.data.as_ptr().cast());
                if self.direct_out && matches!(copy, CopyOut::Store) && m_task == m {
                    // SAFETY: the source rows and the packed weights are only read; the product is written to rows
                    // r0..r0 + m, columns start..start + n of the output (inside its capacity, rows ldc apart), which
                    // this task alone writes (tasks own disjoint (slice, row block) pairs); all outlive the call.
                    return unsafe {
                        let dst = shared.0.add(r0 * ldc + slice.start);
                        matmul_on_thread::<T>((m, k, slice.n), None, src, weights, (dst, ldc))
                    };
                }
                BLOCKS.with_borrow_mut(|(block, gated)| {
                    block.resize(m_task * slice.n, 0.0);
                    // SAFETY: `src` holds m_task rows of k elements (rows r0.. of `a`, or the padded tail) and the
                    // slice's packed weights md.size() bytes, both only read; the dense m_task × n block is this
                    // thread's own; all outlive the call.
                    unsafe {
                        let dst = (block.as_mut_ptr(), slice.n);
                        matmul_on_thread::<T>((m_task, k, slice.n), None, src, weights, dst)?;
                    }
                    // Only the real rows go on (a padded tail's extra rows are dropped here).
                    let block = &block[..m * slice.n];
                    let block: &[f32] = match copy {
                        CopyOut::SiluGate => {
                            gated.resize(m * width, 0.0);
                            silu_mul_rows(block, gated, width);
                            gated
                        }
                        _ => block,
                    };
                    for (r, row) in block.chunks_exact(width).enumerate() {
                        let at = (r0 + r) * ldc + slice.start / half;
                        // SAFETY: row r0 + r, columns start..start + width of the output lie inside its capacity and are
                        // written by this task alone (tasks own disjoint (slice, row block) pairs), through raw pointers:
                        // the memory is not initialised yet, so no reference to it is made.
                        unsafe {
                            let dst = shared.0.add(at);
                            match copy {
                                CopyOut::Add(res) => {
                                    row.iter().zip(&res[at..at + width]).enumerate().for_each(|(j, (&v, &r))| {
                                        dst.add(j).write(v + r);
                                    })
                                }
                                CopyOut::Store | CopyOut::SiluGate => {
                                    ptr::copy_nonoverlapping(row.as_ptr(), dst, width)
                                }
                            }
                        }
                    }
                    Ok(())
                })
            })
        })?;
        // SAFETY: the tasks covered every (row, column) once (slices partition the columns, row blocks the rows) and all
        // succeeded, so all rows × ldc elements are written.
        unsafe { out.set_len(rows * ldc) };
        Ok(out)
    }
}

/// What a task does with its block of the product on the way into the output.
#[derive(Clone, Copy)]
enum CopyOut<'a> {
    Store,
    /// Adds the residual (rows × out_features).
    Add(&'a [f32]),
    /// Each block row is [gate | up]: stores silu(gate) · up.
    SiluGate,
}

thread_local! {
    /// Each thread's dense output block and its SwiGLU, reused across tasks and calls.
    static BLOCKS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Copies `from` (layout `src`) into `to` (layout `dst`), converting the element type if they differ.
fn reorder(src: &Md, dst: &Md, from: &Memory, to: &Memory) -> Result<()> {
    let engine = engine()?;
    let mut pd = ptr::null_mut();
    let attr = Attr::user_scratchpad()?;
    // SAFETY: both descriptors and the attributes are valid.
    check("dnnl_reorder_primitive_desc_create", unsafe {
        ffi::dnnl_reorder_primitive_desc_create(&mut pd, src.as_ref(), engine, dst.as_ref(), engine, attr.0)
    })?;
    let pd = Pd(pd);
    let p = pd.primitive()?;
    execute(&p, &[arg(ffi::DNNL_ARG_FROM, from), arg(ffi::DNNL_ARG_TO, to)])
}

#[cfg(test)]
mod tests;
