//! With the `onednn` feature: links Debian's oneDNN (`libdnnl`) and its OpenMP runtime.
//!
//! With the `cuda` feature: the model core's own CUDA kernel (src/gpu/kernels/masked_softmax.cu) compiled to PTX with
//! nvcc, which candle's CUDA build needs anyway. PTX for compute capability 7.5 runs on every later GPU (the driver
//! compiles it for the GPU at first use).

fn main() {
    if std::env::var_os("CARGO_FEATURE_ONEDNN").is_some() {
        // Debian's libdnnl-dev; libgomp (its OpenMP runtime) for omp_set_num_threads. Both come with the library.
        println!("cargo::rustc-link-lib=dylib=dnnl");
        println!("cargo::rustc-link-lib=dylib=gomp");
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
