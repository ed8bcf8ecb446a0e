//! The GPU's own kernel: attention's masked softmax in CUDA (`kernels/`, compiled to PTX by build.rs).

pub(crate) mod softmax;
