//! Model-core errors as PostgreSQL ERRORs, each with a SQLSTATE a client can branch on and a HINT where there is one.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use qwen_embed_model::{Error, ErrorKind};

/// The SQLSTATE of each kind of model error: the one place this mapping lives.
fn sqlstate(kind: ErrorKind) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match kind {
        ErrorKind::TooLong => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        ErrorKind::BadArgument => ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::Canceled => ERRCODE_QUERY_CANCELED,
        ErrorKind::OutOfMemory => ERRCODE_OUT_OF_MEMORY,
        ErrorKind::ModelMissing => ERRCODE_UNDEFINED_FILE,
        ErrorKind::Unreadable => ERRCODE_IO_ERROR,
        ErrorKind::Unsupported => ERRCODE_FEATURE_NOT_SUPPORTED,
        ErrorKind::BadModel => ERRCODE_CONFIG_FILE_ERROR,
        ErrorKind::Compute => ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises `e` as an ERROR (never returns).
pub fn raise(e: Error) -> ! {
    raise_kind(e.kind(), &e.to_string(), e.hint())
}

/// Raises a model error known by its kind, message and hint (as the model server reports one).
pub fn raise_kind(kind: ErrorKind, message: &str, hint: Option<String>) -> ! {
    raise_with(sqlstate(kind), format!("qwen_embed: {message}"), hint)
}

pub fn raise_with(code: PgSqlErrorCode, message: String, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message, "qwen_embed");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}
