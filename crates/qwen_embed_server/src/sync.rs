//! The server's one locking rule.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking a poisoned lock as it is: a panic while holding one would be a bug in the server, and serving on
/// is better than failing every later request with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
