//! Session set-up, sans-IO: a verified `Hello` in, a `Welcome` (or a typed refusal) out.
//! The connection task only moves bytes; everything decided here is tested without a
//! network. Nothing here knows quinn, so a WebTransport session can use it unchanged.

use selfie_protocol::{ErrorCode, Version, control::Hello, negotiate};
pub use selfie_services::plane::Principal;

/// Verifies access tokens at the edge, without a storage round trip
/// ([`crate::auth::TokenAuthenticator`] over the accounts service's tokens; [`AnonymousOnly`]
/// for an edge without accounts).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal a token proves, or the error code to refuse it with
    /// (`TokenInvalid`, `TokenExpired`, `TokenRevoked`).
    fn authenticate(&self, token: &str) -> Result<Principal, ErrorCode>;

    /// [`Authenticator::authenticate`], with the moment (Unix milliseconds) the token
    /// stops being valid, if it ever does: the edge closes the connection then.
    fn authenticate_until(&self, token: &str) -> Result<(Principal, Option<u64>), ErrorCode> {
        self.authenticate(token).map(|p| (p, None))
    }

    /// Session ids revoked from now on; the edge closes their connections at once.
    fn revocations(&self) -> Option<tokio::sync::broadcast::Receiver<u64>> {
        None
    }

    /// Whether a login session has been revoked (the edge's periodic sweep asks, so a
    /// shard that missed an announcement still closes the session's connections).
    fn is_revoked(&self, _session_id: u64) -> bool {
        false
    }
}

/// Accepts anonymous sessions only; any token is refused as invalid, since nothing here
/// can verify it.
#[derive(Debug, Default, Clone, Copy)]
pub struct AnonymousOnly;

impl Authenticator for AnonymousOnly {
    fn authenticate(&self, _token: &str) -> Result<Principal, ErrorCode> {
        Err(ErrorCode::TokenInvalid)
    }
}

/// What an accepted `Hello` establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Negotiated protocol version.
    pub version: Version,
    /// The authenticated caller; `None` for an anonymous session.
    pub principal: Option<Principal>,
    /// When the access token expires (Unix milliseconds), if it does.
    pub expires_at_ms: Option<u64>,
}

impl SessionInfo {
    /// Whether the session may call `service` (anonymous sessions may only use control
    /// RPCs and sign in).
    pub fn may_call(&self, service: selfie_protocol::Service) -> bool {
        use selfie_protocol::Service;
        self.principal.is_some() || matches!(service, Service::Control | Service::Auth)
    }
}

/// Why a `Hello` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code sent to the client (and used to close the connection).
    pub code: ErrorCode,
    /// A message for the client; never contains the token.
    pub message: String,
}

/// Decides on a `Hello`.
pub fn on_hello(hello: &Hello<'_>, auth: &dyn Authenticator) -> Result<SessionInfo, Refusal> {
    let Some(client) = hello.version().map(Version::from) else {
        return Err(Refusal {
            code: ErrorCode::MissingField,
            message: "Hello.version is required".into(),
        });
    };
    let min = hello.min_version().map(Version::from);
    let version = negotiate(client, min).map_err(|code| Refusal {
        code,
        message: format!(
            "unsupported protocol version {client} (this server speaks {} to {})",
            selfie_protocol::MIN_SUPPORTED_VERSION,
            selfie_protocol::PROTOCOL_VERSION
        ),
    })?;
    let (principal, expires_at_ms) = match hello.access_token() {
        None | Some("") => (None, None),
        Some(token) => {
            let (p, until) = auth.authenticate_until(token).map_err(|code| Refusal {
                code,
                message: "access token refused".into(),
            })?;
            (Some(p), until)
        }
    };
    Ok(SessionInfo {
        version,
        principal,
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatbuffers::FlatBufferBuilder;
    use selfie_protocol::control::{self, HelloArgs};

    fn hello_bytes(major: u16, token: Option<&str>) -> Vec<u8> {
        let mut b = FlatBufferBuilder::new();
        let token = token.map(|t| b.create_string(t));
        let v = Version::new(major, 0).to_wire();
        let h = control::Hello::create(
            &mut b,
            &HelloArgs {
                version: Some(&v),
                access_token: token,
                ..Default::default()
            },
        );
        b.finish(h, None);
        b.finished_data().to_vec()
    }

    fn with_hello<R>(bytes: &[u8], f: impl FnOnce(&Hello<'_>) -> R) -> R {
        f(&flatbuffers::root::<Hello>(bytes).expect("valid hello"))
    }

    struct Fixed;
    impl Authenticator for Fixed {
        fn authenticate(&self, token: &str) -> Result<Principal, ErrorCode> {
            match token {
                "good" => Ok(Principal {
                    user_id: 7,
                    session_id: 1,
                    roles: vec![],
                }),
                "old" => Err(ErrorCode::TokenExpired),
                _ => Err(ErrorCode::TokenInvalid),
            }
        }
    }

    #[test]
    fn an_anonymous_hello_is_welcome_but_may_only_call_control_and_auth() {
        let s = with_hello(&hello_bytes(1, None), |h| on_hello(h, &AnonymousOnly)).expect("ok");
        assert_eq!(s.principal, None);
        assert!(s.may_call(selfie_protocol::Service::Control));
        assert!(s.may_call(selfie_protocol::Service::Auth));
        assert!(!s.may_call(selfie_protocol::Service::Chat));
    }

    #[test]
    fn an_unknown_major_version_is_refused_with_its_code() {
        let r = with_hello(&hello_bytes(9, None), |h| on_hello(h, &AnonymousOnly))
            .expect_err("refused");
        assert_eq!(r.code, ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn tokens_are_checked_by_the_authenticator() {
        let s = with_hello(&hello_bytes(1, Some("good")), |h| on_hello(h, &Fixed)).expect("ok");
        assert_eq!(s.principal.map(|p| p.user_id), Some(7));
        let r =
            with_hello(&hello_bytes(1, Some("old")), |h| on_hello(h, &Fixed)).expect_err("expired");
        assert_eq!(r.code, ErrorCode::TokenExpired);
        assert!(
            !r.message.contains("old"),
            "the token never appears in messages"
        );
        let r = with_hello(&hello_bytes(1, Some("x")), |h| on_hello(h, &AnonymousOnly))
            .expect_err("no authenticator");
        assert_eq!(r.code, ErrorCode::TokenInvalid);
    }
}
