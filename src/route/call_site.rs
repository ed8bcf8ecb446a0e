//! One remembered result per call site, so `ORDER BY cosine_sim(embedding, embed('question'))` runs the model once per
//! query, not once per row, whatever the result cache holds.
//!
//! PostgreSQL does not evaluate a STABLE function with constant arguments once per query (only IMMUTABLE ones are
//! folded by the planner), so a per-row expression calls `embed` once per row. Each call site of a query (one
//! expression node) has its own `FmgrInfo`, which lives as long as the query's execution state; its `fn_extra` is the
//! place PostgreSQL gives a function for exactly this kind of per-call-site memory. The last result is kept there with
//! its full `ResultKey`, so a different argument or setting is never answered from it.

use pgrx::pg_sys;
use pgrx::PgMemoryContexts;

use crate::route::{self, ResultKey};

struct Remembered {
    key: ResultKey,
    vector: Vec<f32>,
}

/// The vector for `key` at the call site of `fcinfo`: the remembered one if the key is equal, else computed (through
/// the per-backend cache) and remembered.
pub fn embed(fcinfo: pg_sys::FunctionCallInfo, key: ResultKey) -> Vec<f32> {
    // SAFETY: PostgreSQL passes a valid fcinfo whose flinfo lives for the whole execution of the query, and fn_extra
    // belongs to this function alone; it is either NULL or a `Option<Remembered>` that this function placed in
    // fn_mcxt, which outlives every call made through this flinfo.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if flinfo.is_null() {
            return route::embed_key(&key);
        }
        if (*flinfo).fn_extra.is_null() {
            // Dropped (freeing the Rust allocations) when fn_mcxt is reset or deleted with the query's state.
            let slot = PgMemoryContexts::For((*flinfo).fn_mcxt).leak_and_drop_on_delete(None::<Remembered>);
            (*flinfo).fn_extra = slot.cast();
        }
        let slot = &mut *((*flinfo).fn_extra as *mut Option<Remembered>);
        if let Some(r) = slot.as_ref().filter(|r| r.key == key) {
            route::record_hit();
            return r.vector.clone();
        }
        let vector = route::embed_key(&key);
        *slot = Some(Remembered { key, vector: vector.clone() });
        vector
    }
}
