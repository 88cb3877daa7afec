//! One error kind for every service, mapped to protocol codes once, here.
//!
//! Services return [`Error`] and use `?` all the way; the wire layer turns it into an
//! `Error` frame with [`ErrorReply::from`]. Like rustls' `Error` → alert mapping, the
//! mapping sits beside the type, so a new variant cannot be added without its code.
//! Messages are for people and never carry secrets; server-side failures (storage,
//! corrupt records, token minting) are answered with a generic message and logged by
//! the edge instead.

use std::borrow::Cow;

use selfie_protocol::ErrorCode;
use selfie_storage::StoreError;

use crate::auth::password::PasswordError;
use crate::auth::throttle::Throttled;
use crate::auth::tokens::TokenError;

/// What went wrong in a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field is malformed, out of range or too long.
    #[error("invalid {field}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
    },
    /// Following, blocking or muting oneself.
    #[error("not allowed on yourself")]
    SelfTarget,
    /// No such object, or one the caller may not see (its existence is not revealed).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The username or e-mail is already taken.
    #[error("{field} is already taken")]
    Taken {
        /// The field.
        field: &'static str,
    },
    /// A block between the two users prevents this.
    #[error("blocked")]
    Blocked,
    /// The operation needs a signed-in session.
    #[error("sign in first")]
    Unauthenticated,
    /// Unknown account or wrong password (one error for both).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The password was right; the account needs a TOTP or recovery code too.
    #[error("second factor required")]
    SecondFactorRequired,
    /// Wrong, reused or missing second-factor code.
    #[error("second factor invalid")]
    SecondFactorInvalid,
    /// The operation needs a pending or confirmed second factor that is not there (or
    /// one is already enabled).
    #[error("second factor not in the required state")]
    SecondFactorState,
    /// The refresh token is unknown or expired.
    #[error("refresh token invalid")]
    TokenInvalid,
    /// The refresh token was already used: the session has been revoked.
    #[error("refresh token reused; session revoked")]
    TokenReused,
    /// The session was revoked.
    #[error("session revoked")]
    SessionRevoked,
    /// Too many attempts from this address, or the account is locked for a while.
    #[error("too many attempts; try again later")]
    Throttled(Throttled),
    /// The caller made too many requests of this kind: retry after this long.
    #[error("too many requests; try again later")]
    RateLimited(std::time::Duration),
    /// Password policy or hashing capacity.
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// The request was made against a state that has moved on (an MLS commit or message
    /// for an epoch that is not the group's current one): catch up, then retry.
    #[error("{0}")]
    Stale(&'static str),
    /// Concurrent changes (or another node holding a lock) kept interfering: retry.
    #[error("busy; try again")]
    Busy,
    /// A bounded queue is full (another shard's mailbox, a worker pool): retry shortly.
    #[error("overloaded; try again shortly")]
    Overloaded,
    /// This deployment or this build does not offer it.
    #[error("{0} is not available")]
    Unavailable(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// A stored record could not be decoded.
    #[error("corrupt {0} record")]
    Corrupt(&'static str),
    /// A fault of this server (not of the request): what went wrong, for the log.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Token minting failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A payload (an upload, a chunk) larger than allowed.
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// Bytes that do not hash to the SHA-256 given.
    #[error("{0} does not match its sha-256")]
    ChecksumMismatch(&'static str),
    /// Media bytes of a type not accepted, not the kind declared, or hostile.
    #[error("media refused: {0}")]
    UnsupportedMedia(#[from] crate::media::process::Refusal),
    /// The caller's media quota would be exceeded.
    #[error("media quota exceeded")]
    QuotaExceeded,
}

/// Services' results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The protocol code a client receives.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument { .. } | Error::SelfTarget => ErrorCode::InvalidArgument,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Taken { .. } | Error::Stale(_) => ErrorCode::Conflict,
            Error::Blocked => ErrorCode::Blocked,
            Error::Unauthenticated => ErrorCode::Unauthenticated,
            Error::InvalidCredentials => ErrorCode::InvalidCredentials,
            Error::SecondFactorRequired => ErrorCode::SecondFactorRequired,
            Error::SecondFactorInvalid => ErrorCode::SecondFactorInvalid,
            Error::SecondFactorState => ErrorCode::PreconditionFailed,
            Error::TokenInvalid => ErrorCode::TokenInvalid,
            Error::TokenReused => ErrorCode::TokenRevoked,
            Error::SessionRevoked => ErrorCode::SessionRevoked,
            Error::Throttled(Throttled::Address(_)) | Error::RateLimited(_) => {
                ErrorCode::RateLimited
            }
            Error::Throttled(Throttled::Account(_)) => ErrorCode::AccountLocked,
            Error::Password(PasswordError::TooShort | PasswordError::TooLong) => {
                ErrorCode::InvalidArgument
            }
            Error::Password(PasswordError::Overloaded) | Error::Overloaded => ErrorCode::Overloaded,
            Error::Busy | Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Storage(_) => ErrorCode::StorageFailure,
            Error::Password(PasswordError::CorruptHash | PasswordError::Internal)
            | Error::Corrupt(_)
            | Error::Internal(_)
            | Error::Token(_) => ErrorCode::Internal,
            Error::TooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::ChecksumMismatch(_) => ErrorCode::ChecksumMismatch,
            Error::UnsupportedMedia(_) => ErrorCode::UnsupportedMediaType,
            Error::QuotaExceeded => ErrorCode::QuotaExceeded,
        }
    }

    /// When a retry may succeed, in milliseconds (0: no hint).
    pub fn retry_after_ms(&self) -> u32 {
        match self {
            Error::Throttled(Throttled::Address(w) | Throttled::Account(w))
            | Error::RateLimited(w) => w.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
            Error::Password(PasswordError::Overloaded) => 500,
            Error::Overloaded | Error::Busy => 50,
            _ => 0,
        }
    }

    /// The request field at fault, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::InvalidArgument { field } | Error::Taken { field } => Some(field),
            Error::Password(PasswordError::TooShort | PasswordError::TooLong) => Some("password"),
            _ => None,
        }
    }

    /// Whether this is a fault of the server (storage, a corrupt record, a bug) rather
    /// than of the request or of load: these are logged, with their details.
    pub fn is_server_fault(&self) -> bool {
        matches!(
            self,
            Error::Storage(_)
                | Error::Corrupt(_)
                | Error::Internal(_)
                | Error::Token(_)
                | Error::Password(PasswordError::CorruptHash | PasswordError::Internal)
        )
    }

    /// The message a client receives: the error itself, except for server-side
    /// failures, whose details stay in the server's log.
    pub fn wire_message(&self) -> Cow<'static, str> {
        match self {
            Error::Storage(_) => "storage unavailable".into(),
            Error::Corrupt(_) | Error::Internal(_) | Error::Token(_) => "internal error".into(),
            Error::Password(PasswordError::CorruptHash | PasswordError::Internal) => {
                "internal error".into()
            }
            other => other.to_string().into(),
        }
    }
}

/// The wire form of a refusal: what an `Error` frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Protocol error code.
    pub code: ErrorCode,
    /// Human-readable message (no secrets).
    pub message: Cow<'static, str>,
    /// Retry hint, 0 when none.
    pub retry_after_ms: u32,
    /// The request field at fault, when there is one.
    pub field: Option<&'static str>,
}

impl ErrorReply {
    /// A refusal with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
            field: None,
        }
    }

    /// The same refusal with a retry hint.
    pub fn retry_after(mut self, ms: u32) -> Self {
        self.retry_after_ms = ms;
        self
    }
}

impl From<&Error> for ErrorReply {
    fn from(e: &Error) -> Self {
        Self {
            code: e.code(),
            message: e.wire_message(),
            retry_after_ms: e.retry_after_ms(),
            field: e.field(),
        }
    }
}

impl From<Error> for ErrorReply {
    fn from(e: Error) -> Self {
        Self::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_failures_keep_their_details_out_of_the_reply() {
        let e = Error::Storage(StoreError::Cql("cql node 10.0.0.5 down".into()));
        let r = ErrorReply::from(&e);
        assert_eq!(r.code, ErrorCode::StorageFailure);
        assert!(!r.message.contains("10.0.0.5"), "{}", r.message);
        assert_eq!(
            ErrorReply::from(Error::Corrupt("post")).message,
            "internal error"
        );
    }

    #[test]
    fn client_errors_name_their_field_and_throttles_their_wait() {
        let r = ErrorReply::from(Error::InvalidArgument { field: "text" });
        assert_eq!(
            (r.code, r.field),
            (ErrorCode::InvalidArgument, Some("text"))
        );
        assert_eq!(r.message, "invalid text");
        let r = ErrorReply::from(Error::Throttled(Throttled::Account(
            std::time::Duration::from_secs(2),
        )));
        assert_eq!((r.code, r.retry_after_ms), (ErrorCode::AccountLocked, 2000));
        assert_eq!(
            ErrorReply::from(Error::NotFound("post")).message,
            "no such post"
        );
    }
}
