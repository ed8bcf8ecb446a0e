//! pgvector's `vector` type, read and written directly in its on-disk layout (pgvector src/vector.h):
//! `int32 vl_len_` (varlena header), `int16 dim`, `int16 unused` (0), `float4 x[dim]`.
//! pgvector's OID is only known at run time, so `vector` appears in our SQL by name and arrays of it are built with the
//! OID looked up in the catalog.

use std::cell::Cell;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys;
use pgrx::prelude::*;

const HEADER: usize = 8;
/// pgvector's VECTOR_MAX_DIM.
pub const MAX_DIM: usize = 16000;

#[derive(Debug, Clone, PartialEq)]
pub struct Vector(pub Vec<f32>);

impl FromDatum for Vector {
    /// SAFETY (the caller's, per FromDatum): `datum` is a `vector` value; it is detoasted and its size checked
    /// against the dimension count before any float is read.
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        if is_null {
            return None;
        }
        let raw = datum.cast_mut_ptr::<pg_sys::varlena>();
        let detoasted = pg_sys::pg_detoast_datum(raw);
        let size = pgrx::varlena::varsize_any(detoasted);
        let bytes = detoasted as *const u8;
        let dim = std::ptr::read_unaligned(bytes.add(4) as *const i16) as usize;
        if size != HEADER + 4 * dim {
            error!("malformed vector datum: {size} bytes for {dim} dimensions");
        }
        let data = bytes.add(HEADER) as *const f32;
        let values = (0..dim).map(|i| std::ptr::read_unaligned(data.add(i))).collect();
        if detoasted != raw {
            pg_sys::pfree(detoasted.cast());
        }
        Some(Vector(values))
    }
}

impl IntoDatum for Vector {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        assert!(self.0.len() <= MAX_DIM, "vector of {} dimensions exceeds pgvector's limit {MAX_DIM}", self.0.len());
        let size = HEADER + 4 * self.0.len();
        // SAFETY: palloc0 returns `size` writable bytes (or raises an ERROR); the header, the dimension count at
        // offset 4 and the floats at HEADER all lie inside them, written unaligned where pgvector's layout may be.
        unsafe {
            let ptr = pg_sys::palloc0(size) as *mut u8;
            pgrx::set_varsize_4b(ptr.cast(), size as i32);
            std::ptr::write_unaligned(ptr.add(4) as *mut i16, self.0.len() as i16);
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), ptr.add(HEADER) as *mut f32, self.0.len());
            Some(pg_sys::Datum::from(ptr))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::Oid::INVALID
    }

    fn is_compatible_with(_other: pg_sys::Oid) -> bool {
        true
    }
}

// SAFETY: arguments are read through FromDatum above; SQL declares them as pgvector's `vector`.
unsafe impl<'fcx> ArgAbi<'fcx> for Vector {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        arg.unbox_arg_using_from_datum().unwrap_or_else(|| panic!("argument {index} must not be NULL"))
    }
}

// SAFETY: returns a palloc'd `vector` datum (into_datum) or NULL, as the SQL signature declares.
unsafe impl BoxRet for Vector {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        match self.into_datum() {
            Some(d) => fcinfo.return_raw_datum(d),
            None => fcinfo.return_null(),
        }
    }
}

impl_sql_translatable!(Vector, "vector");

/// A `vector[]` with NULL elements where an input was NULL.
pub struct VectorArray(pub Vec<Option<Vector>>);

// SAFETY: builds a `vector[]` with construct_md_array from datums of that type, with the type's own length,
// by-value flag and alignment, and a null flag for each NULL element.
unsafe impl BoxRet for VectorArray {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        let oid = vector_type_oid();
        let (mut typlen, mut byval, mut align) = (0i16, false, 0 as std::ffi::c_char);
        pg_sys::get_typlenbyvalalign(oid, &mut typlen, &mut byval, &mut align);
        let n = self.0.len();
        let mut nulls: Vec<bool> = self.0.iter().map(Option::is_none).collect();
        let mut datums: Vec<pg_sys::Datum> =
            self.0.into_iter().map(|v| v.and_then(IntoDatum::into_datum).unwrap_or(pg_sys::Datum::from(0))).collect();
        let mut dims = [n as i32];
        let mut lbs = [1i32];
        let array = pg_sys::construct_md_array(
            datums.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lbs.as_mut_ptr(),
            oid,
            typlen as i32,
            byval,
            align,
        );
        fcinfo.return_raw_datum(pg_sys::Datum::from(array))
    }
}

impl_sql_translatable!(VectorArray, "vector[]");

thread_local! {
    static VECTOR_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::Oid::INVALID) };
}

/// OID of pgvector's `vector`, found through the extension that owns it (not through search_path).
pub fn vector_type_oid() -> pg_sys::Oid {
    let cached = VECTOR_OID.get();
    if cached != pg_sys::Oid::INVALID {
        return cached;
    }
    // A read-only query (select, not Spi::get_one, which assigns a transaction id and so fails inside a parallel
    // query: "cannot assign XIDs during a parallel operation").
    let oid = Spi::connect(|client| {
        client
            .select(
                "SELECT t.oid FROM pg_catalog.pg_type t
                   JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                                              AND d.objid = t.oid AND d.deptype = 'e'
                   JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                  WHERE e.extname = 'vector' AND t.typname = 'vector'",
                Some(1),
                &[],
            )?
            .first()
            .get_one::<pg_sys::Oid>()
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| error!("pgvector's vector type was not found; run CREATE EXTENSION vector"));
    VECTOR_OID.set(oid);
    oid
}
