//! oneDNN 3.x (Debian 13's 3.7): memory descriptors are opaque objects oneDNN allocates (created, cloned, destroyed);
//! a matmul's primitive descriptor is made directly from the memory descriptors.

use std::ptr;

#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
#[path = "ffi_v3.rs"]
pub(super) mod ffi;

use super::{check, Result};

/// A memory descriptor, owned (destroyed on drop).
pub(super) struct Md(ffi::dnnl_memory_desc_t);

// SAFETY: oneDNN never changes a memory descriptor after it is made; every call that takes one here only reads it.
unsafe impl Send for Md {}
unsafe impl Sync for Md {}

/// How the calls taking a memory descriptor name one.
pub(super) type MdRef = ffi::const_dnnl_memory_desc_t;

impl Drop for Md {
    fn drop(&mut self) {
        // SAFETY: made by one of the create or clone calls below and owned by this value alone.
        unsafe { ffi::dnnl_memory_desc_destroy(self.0) };
    }
}

impl Clone for Md {
    fn clone(&self) -> Md {
        // SAFETY: `self` is a valid descriptor.
        unsafe { Md::copy_of(self.0) }.expect("oneDNN could not copy a memory descriptor (out of memory)")
    }
}

impl Md {
    pub(super) fn by_tag(
        dt: ffi::dnnl_data_type_t,
        dims: [ffi::dnnl_dim_t; 2],
        tag: ffi::dnnl_format_tag_t,
    ) -> Result<Md> {
        let mut md = ptr::null_mut();
        // SAFETY: writes the new descriptor's handle; `dims` holds the 2 dimensions named.
        check("dnnl_memory_desc_create_with_tag", unsafe {
            ffi::dnnl_memory_desc_create_with_tag(&mut md, 2, dims.as_ptr(), dt, tag)
        })?;
        Ok(Md(md))
    }

    pub(super) fn by_strides(
        dt: ffi::dnnl_data_type_t,
        dims: [ffi::dnnl_dim_t; 2],
        strides: [ffi::dnnl_dim_t; 2],
    ) -> Result<Md> {
        let mut md = ptr::null_mut();
        // SAFETY: writes the new descriptor's handle; `dims` and `strides` each hold the 2 values named.
        check("dnnl_memory_desc_create_with_strides", unsafe {
            ffi::dnnl_memory_desc_create_with_strides(&mut md, 2, dims.as_ptr(), dt, strides.as_ptr())
        })?;
        Ok(Md(md))
    }

    /// A copy of a descriptor a primitive descriptor returned (which the primitive descriptor owns).
    ///
    /// # Safety
    /// `md` must be a valid descriptor (one owned by a primitive descriptor alive during the call).
    pub(super) unsafe fn copy_of(md: MdRef) -> Result<Md> {
        let mut copy = ptr::null_mut();
        check("dnnl_memory_desc_clone", ffi::dnnl_memory_desc_clone(&mut copy, md))?;
        Ok(Md(copy))
    }

    pub(super) fn as_ref(&self) -> MdRef {
        self.0
    }

    pub(super) fn size(&self) -> usize {
        // SAFETY: reads a valid descriptor.
        unsafe { ffi::dnnl_memory_desc_get_size(self.0) }
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
    ffi::dnnl_matmul_primitive_desc_create(pd, engine, src.0, weights.0, ptr::null(), dst.0, attr)
}
