//! The gateway's one error type, with single-`match` mappings to an HTTP status, a wire code and
//! a human message. Causes of internal errors go to the logs, never to clients.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use confab_protocol::api::ErrorBody;
use confab_protocol::ErrorCode;

/// Anything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or invalid input; the text says what.
    #[error("{0}")]
    BadRequest(String),
    /// Missing, expired or revoked token, or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Not allowed for this user.
    #[error("{0}")]
    Forbidden(String),
    /// Not a member of the thread (or no such thread: the two are indistinguishable on purpose,
    /// so non-members cannot probe which threads exist).
    #[error("not a member of this thread")]
    NotMember,
    /// No such object.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// Over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Over a rate limit.
    #[error("{0}")]
    RateLimited(String),
    /// A dependency is down; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Unsupported protocol version.
    #[error("{0}")]
    UnsupportedVersion(String),
    /// A bug or unexpected fault; the cause is logged where it happens.
    #[error("internal error")]
    Internal(String),
    /// The route exists, but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
}

/// The gateway's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotMember => ErrorCode::NotMember,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::RateLimited(_) => ErrorCode::RateLimited,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::Internal(_) => ErrorCode::Internal,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::UnsupportedVersion(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::NotMember => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The message shown to clients (never an internal cause).
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// The JSON error body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: self.public_message(),
        }
    }
}

impl From<confab_persistence::Error> for Error {
    fn from(e: confab_persistence::Error) -> Self {
        use confab_persistence::Error as P;
        match e {
            P::NotFound => Error::NotFound("object"),
            P::Conflict(what) => Error::Conflict(format!("already exists ({what})")),
            P::Invalid(what) => {
                // The checks before the store should have caught it: worth a look when it shows.
                tracing::warn!(error = %what, "database refused a value that passed the checks");
                Error::BadRequest(what)
            }
            P::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Error::Unavailable("database unavailable, retry later".into())
            }
            P::Db(cause) => {
                tracing::error!(error = %cause, "database error");
                Error::Internal(cause.to_string())
            }
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status());
        if matches!(self, Self::Unavailable(_) | Self::RateLimited(_)) {
            resp.insert_header(("Retry-After", "1"));
        }
        resp.json(self.body())
    }
}

/// Turn actix's JSON/query/path extractor failures into `bad_request` bodies (instead of actix's
/// plain-text 400s), so every HTTP error has the same JSON shape. Bodies over `limit` bytes
/// (`limits.max_http_body_bytes`) are `too_large`.
pub fn json_config(limit: usize) -> actix_web::web::JsonConfig {
    actix_web::web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _| {
            let e = match &err {
                actix_web::error::JsonPayloadError::Overflow { .. }
                | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                    Error::TooLarge("request body too large".into())
                }
                other => Error::BadRequest(format!("invalid JSON body: {other}")),
            };
            actix_web::error::InternalError::from_response(err, e.error_response()).into()
        })
}

/// Query-string extractor errors as `bad_request` JSON.
pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|err, _| {
        let e = Error::BadRequest(format!("invalid query: {err}"));
        actix_web::error::InternalError::from_response(err, e.error_response()).into()
    })
}

/// Path extractor errors (e.g. a malformed UUID) as `bad_request` JSON.
pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default().error_handler(|err, _| {
        let e = Error::BadRequest(format!("invalid path: {err}"));
        actix_web::error::InternalError::from_response(err, e.error_response()).into()
    })
}

/// actix answers a known path asked with another method with an empty 405 that lists the
/// path's methods in `Allow`; give it the JSON body every other error has, keeping `Allow`.
pub fn method_not_allowed(res: actix_web::dev::ServiceResponse) -> actix_web::dev::ServiceResponse {
    use actix_web::http::header::ALLOW;
    let allow = res.headers().get(ALLOW).cloned();
    let mut resp = Error::MethodNotAllowed.error_response();
    if let Some(methods) = allow {
        resp.headers_mut().insert(ALLOW, methods);
    }
    res.into_response(resp)
}
