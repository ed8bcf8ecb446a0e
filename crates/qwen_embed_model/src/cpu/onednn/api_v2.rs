//! oneDNN 2.x (Debian 12's 2.6): a memory descriptor is a plain C struct the caller fills in; a matmul is an op
//! descriptor first, then a primitive descriptor made from it.

use std::ptr;

#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
#[path = "ffi_v2.rs"]
pub(super) mod ffi;

use super::{check, Result};

/// A memory descriptor (a plain C struct: copied freely, nothing to free).
#[derive(Clone)]
pub(super) struct Md(ffi::dnnl_memory_desc_t);

// SAFETY: plain data (dimensions, strides, a format description), no pointers.
unsafe impl Send for Md {}
unsafe impl Sync for Md {}

/// How the calls taking a memory descriptor name one.
pub(super) type MdRef = *const ffi::dnnl_memory_desc_t;

impl Md {
    fn zeroed() -> Md {
        // SAFETY: the descriptor is a C struct of integers and arrays of integers, for which all-zero is valid (it is
        // the "zero memory descriptor" oneDNN itself uses for an absent argument).
        Md(unsafe { std::mem::zeroed() })
    }

    pub(super) fn by_tag(
        dt: ffi::dnnl_data_type_t,
        dims: [ffi::dnnl_dim_t; 2],
        tag: ffi::dnnl_format_tag_t,
    ) -> Result<Md> {
        let mut md = Md::zeroed();
        // SAFETY: `md` is a writable descriptor and `dims` holds the 2 dimensions named.
        check("dnnl_memory_desc_init_by_tag", unsafe {
            ffi::dnnl_memory_desc_init_by_tag(&mut md.0, 2, dims.as_ptr(), dt, tag)
        })?;
        Ok(md)
    }

    pub(super) fn by_strides(
        dt: ffi::dnnl_data_type_t,
        dims: [ffi::dnnl_dim_t; 2],
        strides: [ffi::dnnl_dim_t; 2],
    ) -> Result<Md> {
        let mut md = Md::zeroed();
        // SAFETY: `md` is writable; `dims` and `strides` each hold the 2 values named.
        check("dnnl_memory_desc_init_by_strides", unsafe {
            ffi::dnnl_memory_desc_init_by_strides(&mut md.0, 2, dims.as_ptr(), dt, strides.as_ptr())
        })?;
        Ok(md)
    }

    /// A copy of a descriptor a primitive descriptor returned.
    ///
    /// # Safety
    /// `md` must point to a valid descriptor (one owned by a primitive descriptor alive during the call).
    pub(super) unsafe fn copy_of(md: MdRef) -> Result<Md> {
        Ok(Md(*md))
    }

    pub(super) fn as_ref(&self) -> MdRef {
        &self.0
    }

    pub(super) fn size(&self) -> usize {
        // SAFETY: reads a valid descriptor.
        unsafe { ffi::dnnl_memory_desc_get_size(&self.0) }
    }
}

/// Makes the primitive descriptor of `src` · `weights` → `dst` (no bias) with `attr`.
///
/// # Safety
/// `pd` must be writable; `engine` and `attr` valid handles.
pub(super) unsafe fn matmul_primitive_desc_create(
    pd: *mut ffi::dnnl_primitive_desc_t,
    engine: ffi::dnnl_engine_t,
    (src, weights, dst): (&Md, &Md, &Md),
    attr: ffi::const_dnnl_primitive_attr_t,
) -> ffi::dnnl_status_t {
    // SAFETY: an all-zero op descriptor is what dnnl_matmul_desc_init fills in.
    let mut desc: ffi::dnnl_matmul_desc_t = std::mem::zeroed();
    let status = ffi::dnnl_matmul_desc_init(&mut desc, &src.0, &weights.0, ptr::null(), &dst.0);
    if status != ffi::dnnl_status_t_dnnl_success {
        return status;
    }
    // The primitive descriptor copies the op descriptor: `desc` may go when this returns.
    let op = &desc as *const ffi::dnnl_matmul_desc_t as ffi::const_dnnl_op_desc_t;
    ffi::dnnl_primitive_desc_create(pd, op, attr, engine, ptr::null())
}
