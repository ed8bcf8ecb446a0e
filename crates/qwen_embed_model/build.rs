//! With the `onednn` feature: finds the installed oneDNN's version (its `dnnl_version.h`: Debian 12 ships 2.6,
//! Debian 13 3.7), links it and its OpenMP runtime, and sets `onednn_api = "2"` or `"3"`, which picks the matching thin
//! FFI layer (`src/cpu/onednn/api_v2.rs`, `api_v3.rs`); everything above it is the same. No oneDNN found: the build
//! goes on without it (a warning says so) and the model runs on its other CPU kernels; the `onednn` cfg marks the code
//! that needs the library.
//!
//! With the `cuda` feature: the model core's own CUDA kernel (src/gpu/kernels/masked_softmax.cu) compiled to PTX with
//! nvcc, which candle's CUDA build needs anyway. PTX for compute capability 7.5 runs on every later GPU (the driver
//! compiles it for the GPU at first use).

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(onednn)");
    println!("cargo::rustc-check-cfg=cfg(onednn_api, values(\"2\", \"3\"))");
    if std::env::var_os("CARGO_FEATURE_ONEDNN").is_some() {
        link_onednn();
    }
    println!("cargo::rerun-if-changed=src/gpu/kernels/masked_softmax.cu");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|root| std::path::Path::new(&root).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    let out = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("masked_softmax.ptx");
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-arch=compute_75", "-O3", "-o"])
        .arg(&out)
        .arg("src/gpu/kernels/masked_softmax.cu")
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    assert!(status.success(), "nvcc failed on src/gpu/kernels/masked_softmax.cu");
}

/// Where the installed oneDNN's headers say which version it is: `ONEDNN_INCLUDE` if set, else the system's.
fn onednn_version_header() -> PathBuf {
    let include = std::env::var_os("ONEDNN_INCLUDE").map(PathBuf::from).unwrap_or_else(|| "/usr/include".into());
    include.join("oneapi/dnnl/dnnl_version.h")
}

/// Links Debian's libdnnl (and libgomp, its OpenMP runtime, for omp_set_num_threads; both come with the library) and
/// sets the cfgs for its API version.
fn link_onednn() {
    println!("cargo::rerun-if-env-changed=ONEDNN_INCLUDE");
    let header = onednn_version_header();
    println!("cargo::rerun-if-changed={}", header.display());
    let major = std::fs::read_to_string(&header).ok().and_then(|text| {
        text.lines().find_map(|l| l.trim().strip_prefix("#define DNNL_VERSION_MAJOR")?.trim().parse::<u32>().ok())
    });
    match major {
        Some(major @ (2 | 3)) => {
            println!("cargo::rustc-cfg=onednn");
            println!("cargo::rustc-cfg=onednn_api=\"{major}\"");
            println!("cargo::rustc-link-lib=dylib=dnnl");
            println!("cargo::rustc-link-lib=dylib=gomp");
        }
        Some(other) => println!(
            "cargo::warning=oneDNN {other}.x at {} has an API this build does not bind (2.x, 3.x): building without \
             oneDNN (no bf16 linear layers)",
            header.display()
        ),
        None => println!(
            "cargo::warning=no oneDNN found ({} missing; Debian: apt-get install libdnnl-dev): building without \
             oneDNN (no bf16 linear layers)",
            header.display()
        ),
    }
}
