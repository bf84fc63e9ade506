//! The one list of machine-readable error codes, shared by HTTP bodies and WebSocket frames.
//! Codes are stable: clients switch on them. Add new ones; never rename one.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code (`snake_case` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body could not be understood (malformed JSON, wrong types, unknown fields).
    BadRequest,
    /// No valid token, or the token expired or was revoked.
    Unauthorized,
    /// Authenticated, but this action is not allowed (e.g. deleting someone else's message).
    Forbidden,
    /// The caller is not a member of the thread it addressed (or the thread does not exist).
    NotMember,
    /// The addressed object does not exist.
    NotFound,
    /// Something conflicts with existing state (e.g. a taken username).
    Conflict,
    /// A body, frame or list is larger than the configured limit.
    TooLarge,
    /// The caller is sending faster than the configured rate.
    RateLimited,
    /// A dependency (Postgres) is down; nothing was stored, retry later.
    Unavailable,
    /// The client asked for a protocol version this server does not speak.
    UnsupportedVersion,
    /// An unexpected server fault; the cause is in the server's logs, never in the reply.
    Internal,
    /// HTTP only: the path exists but not with this method (the `Allow` header lists those it
    /// takes).
    MethodNotAllowed,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotMember => "not_member",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Internal => "internal",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// Every code, for tests and docs.
    pub const ALL: [ErrorCode; 12] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotMember,
        Self::NotFound,
        Self::Conflict,
        Self::TooLarge,
        Self::RateLimited,
        Self::Unavailable,
        Self::UnsupportedVersion,
        Self::Internal,
        Self::MethodNotAllowed,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_pinned() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap_or(ErrorCode::Internal);
            assert_eq!(back, code);
        }
        assert_eq!(ErrorCode::NotMember.as_str(), "not_member");
        assert_eq!(ErrorCode::TooLarge.as_str(), "too_large");
    }
}
