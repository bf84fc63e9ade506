//! The one error type of this crate. Database errors are classified here, once, so callers can
//! map them to wire codes without looking at driver details.

use sea_orm::{DbErr, RuntimeErr, SqlErr};

/// What went wrong with a query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The addressed row does not exist.
    #[error("not found")]
    NotFound,
    /// A unique constraint was violated (e.g. a taken username).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database refused a value the caller gave (a Postgres data exception, class 22: a NUL
    /// character in text, a number out of range): the input, not a fault of the server. The
    /// gateway refuses such input before it gets here; this keeps one it missed a 400.
    #[error("invalid value: {0}")]
    Invalid(String),
    /// The database could not be reached (down, restarting, pool exhausted). Nothing was written.
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),
    /// Any other database error: a bug or a schema mismatch.
    #[error("database error: {0}")]
    Db(DbErr),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<DbErr> for Error {
    fn from(e: DbErr) -> Self {
        if let Some(SqlErr::UniqueConstraintViolation(what)) = e.sql_err() {
            return Error::Conflict(what);
        }
        if is_unavailable(&e) {
            return Error::Unavailable(e);
        }
        if let Some(what) = data_exception(&e) {
            return Error::Invalid(what);
        }
        Error::Db(e)
    }
}

fn is_unavailable(e: &DbErr) -> bool {
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            is_unavailable_sqlx(s)
        }
        _ => {
            // Some driver paths only keep the text; these are the ones a restarting server gives.
            let text = e.to_string();
            [
                "Connection refused",
                "connection reset",
                "broken pipe",
                "terminating connection",
                "the database system is",
                "pool timed out",
                "PoolTimedOut",
                "Io(",
                "unexpected end of file",
                "database is locked",
            ]
            .iter()
            .any(|needle| text.contains(needle))
        }
    }
}

/// A Postgres data exception (SQLSTATE class 22), as a message that names the rule and not the
/// database's internals.
fn data_exception(e: &DbErr) -> Option<String> {
    let (DbErr::Exec(RuntimeErr::SqlxError(sea_orm::sqlx::Error::Database(db)))
    | DbErr::Query(RuntimeErr::SqlxError(sea_orm::sqlx::Error::Database(db)))) = e
    else {
        return None;
    };
    let code = db.code()?;
    match code.as_ref() {
        // character_not_in_repertoire: the only invalid text valid UTF-8 can be is a NUL.
        "22021" => Some("text must not contain NUL (\\u0000) characters".into()),
        c if c.starts_with("22") => Some("a value is out of range or malformed".into()),
        _ => None,
    }
}

fn is_unavailable_sqlx(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as S;
    match e {
        S::Io(_) | S::PoolTimedOut | S::PoolClosed | S::WorkerCrashed | S::Tls(_) => true,
        S::Database(db) => {
            // Postgres admin shutdown / cannot connect now / crash shutdown (class 57P) and
            // connection exceptions (class 08).
            // ... and transaction rollbacks (class 40: deadlock, serialization), which a retry
            // resolves.
            db.code()
                .map(|c| c.starts_with("57P") || c.starts_with("08") || c.starts_with("40"))
                .unwrap_or(false)
        }
        _ => false,
    }
}
