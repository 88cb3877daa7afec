//! The error-code table: classes, retry advice and connection-fatal codes.
//!
//! Codes are defined in `control.fbs` (`ErrorCode`) so that clients in every language get
//! the same numbers; this module adds the facts a caller needs to act on one. The numeric
//! value doubles as the QUIC application error code when a code closes a connection.

use crate::ErrorCode;

/// The broad class of an error code (its hundreds digit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 1xx: the peer sent bytes that are not a valid frame or message.
    Protocol,
    /// 2xx: session state and limits (rate, streams, connections, drain).
    Session,
    /// 3xx: authentication.
    Auth,
    /// 4xx: the request itself (arguments, permissions, existence).
    Request,
    /// 5xx: the server failed.
    Server,
    /// A code outside the table (a newer peer).
    Unknown,
}

impl ErrorCode {
    /// The class of this code.
    pub fn class(self) -> ErrorClass {
        match self.0 {
            100..=199 => ErrorClass::Protocol,
            200..=299 => ErrorClass::Session,
            300..=399 => ErrorClass::Auth,
            400..=499 => ErrorClass::Request,
            500..=599 => ErrorClass::Server,
            _ => ErrorClass::Unknown,
        }
    }

    /// Whether the same request may succeed if retried later (possibly elsewhere).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::Overloaded
                | ErrorCode::Draining
                | ErrorCode::TooManyStreams
                | ErrorCode::TooManyConnections
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::StorageFailure
                | ErrorCode::IdleTimeout
                | ErrorCode::HandshakeTimeout
                | ErrorCode::ResyncRequired
        )
    }

    /// Whether a server that detects this error closes the whole connection (rather than
    /// answering one request): the peer can no longer be trusted to frame correctly.
    pub fn closes_connection(self) -> bool {
        matches!(self.class(), ErrorClass::Protocol)
            || matches!(
                self,
                ErrorCode::UnsupportedVersion
                    | ErrorCode::HandshakeTimeout
                    | ErrorCode::IdleTimeout
                    | ErrorCode::TooManyConnections
                    | ErrorCode::HelloRequired
                    | ErrorCode::SessionRevoked
            )
    }

    /// Whether this is a code that the current schema defines.
    pub fn is_known(self) -> bool {
        self.variant_name().is_some()
    }

    /// A stable, bounded label for metrics (`"unknown"` for codes outside the table).
    pub fn label(self) -> &'static str {
        self.variant_name().unwrap_or("unknown")
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.label(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_class_and_a_unique_value() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ENUM_VALUES {
            assert!(seen.insert(code.0), "duplicate value {}", code.0);
            if *code != ErrorCode::Unknown {
                assert_ne!(code.class(), ErrorClass::Unknown, "{code}");
            }
        }
    }

    #[test]
    fn protocol_errors_close_the_connection_and_request_errors_do_not() {
        assert!(ErrorCode::MalformedFrame.closes_connection());
        assert!(ErrorCode::FrameTooLarge.closes_connection());
        assert!(!ErrorCode::NotFound.closes_connection());
        assert!(!ErrorCode::RateLimited.closes_connection());
    }

    #[test]
    fn unknown_codes_are_labelled_without_panicking() {
        assert_eq!(ErrorCode(9999).label(), "unknown");
        assert_eq!(ErrorCode(9999).class(), ErrorClass::Unknown);
        assert!(!ErrorCode(9999).is_known());
    }
}
