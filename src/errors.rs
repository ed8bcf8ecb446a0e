//! Model-core errors as PostgreSQL ERRORs, each with a SQLSTATE a client can branch on and a HINT where there is one.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use qwen_embed_model::Error;

fn sqlstate(e: &Error) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match e {
        Error::TooLong { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        Error::BadDim { .. } | Error::BadChunking(_) | Error::BadWeighting(_) => ERRCODE_INVALID_PARAMETER_VALUE,
        Error::Canceled => ERRCODE_QUERY_CANCELED,
        Error::OutOfMemory { .. } => ERRCODE_OUT_OF_MEMORY,
        Error::ModelDir { .. } => ERRCODE_UNDEFINED_FILE,
        Error::Io { .. } => ERRCODE_IO_ERROR,
        Error::Unsupported(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
        Error::Config { .. } | Error::Weights { .. } | Error::Shape { .. } | Error::Tokenizer { .. } => {
            ERRCODE_CONFIG_FILE_ERROR
        }
        Error::Compute(_) => ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises `e` as an ERROR (never returns).
pub fn raise(e: Error) -> ! {
    raise_with(sqlstate(&e), format!("qwen_embed: {e}"), e.hint())
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
