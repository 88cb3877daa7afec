//! The `Auth` service on the wire: decodes auth operations, calls the accounts service,
//! encodes the answers. Registration, login and refresh are open to anonymous sessions;
//! logout and session management need a signed-in session and act on its own user only.
//!
//! Not wired yet (accounts issue): password reset by e-mail, e-mail verification,
//! recovery-code regeneration. They are answered `Unavailable`.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use flatbuffers::WIPOffset;
use futures::future::LocalBoxFuture;
use selfie_codec::{Builder, Encoder, Frame, Limits, build};
use selfie_protocol::auth::{self as pa, AuthOp};
use selfie_protocol::{Body, Envelope, ErrorCode, common};
use selfie_services::auth::accounts::{AccountError, Accounts, IssuedTokens, REFRESH_TTL};
use selfie_services::auth::password::PasswordError;
use selfie_services::auth::throttle::Throttled;
use selfie_services::graph::Graph;
use selfie_services::users::Users;
use selfie_storage::Store;

use crate::service::{ErrorReply, RequestContext, Service};

/// The auth operations of one shard.
pub struct AuthApi<S> {
    accounts: Rc<Accounts<S>>,
    users: Rc<Users<S>>,
    graph: Rc<Graph<S>>,
    encoder: Rc<RefCell<Encoder>>,
    access_ttl_ms: u64,
}

impl<S: Store + 'static> AuthApi<S> {
    /// Over one shard's accounts service.
    /// `users` gets a profile for every new account; `graph` loses a deleted account's
    /// edges.
    pub fn new(
        accounts: Accounts<S>,
        users: Rc<Users<S>>,
        graph: Rc<Graph<S>>,
        access_ttl: std::time::Duration,
    ) -> Self {
        Self {
            accounts: Rc::new(accounts),
            users,
            graph,
            encoder: Rc::new(RefCell::new(Encoder::new(Limits::DEFAULT))),
            access_ttl_ms: access_ttl.as_millis() as u64,
        }
    }
}

/// The protocol code for an accounts error.
pub fn error_reply(e: &AccountError) -> ErrorReply {
    let (code, message): (ErrorCode, String) = match e {
        AccountError::InvalidArgument { field } => {
            (ErrorCode::InvalidArgument, format!("invalid {field}"))
        }
        AccountError::Taken { field } => (ErrorCode::Conflict, format!("{field} is already taken")),
        AccountError::InvalidCredentials => {
            (ErrorCode::InvalidCredentials, "invalid credentials".into())
        }
        AccountError::TokenInvalid => (ErrorCode::TokenInvalid, "refresh token invalid".into()),
        AccountError::TokenReused => (
            ErrorCode::TokenRevoked,
            "refresh token reused; session revoked".into(),
        ),
        AccountError::SessionRevoked => (ErrorCode::SessionRevoked, "session revoked".into()),
        AccountError::NoSuchSession => (ErrorCode::NotFound, "no such session".into()),
        AccountError::SecondFactorRequired => (
            ErrorCode::SecondFactorRequired,
            "second factor required".into(),
        ),
        AccountError::SecondFactorInvalid => (
            ErrorCode::SecondFactorInvalid,
            "second factor invalid".into(),
        ),
        AccountError::SecondFactorState => (
            ErrorCode::PreconditionFailed,
            "second factor not in the required state".into(),
        ),
        AccountError::Password(PasswordError::TooShort | PasswordError::TooLong) => {
            (ErrorCode::InvalidArgument, e.to_string())
        }
        AccountError::Password(PasswordError::Overloaded) => {
            (ErrorCode::Overloaded, "try again shortly".into())
        }
        AccountError::Storage(_) => (ErrorCode::StorageFailure, "storage unavailable".into()),
        AccountError::Unavailable => (
            ErrorCode::Unavailable,
            "not available on this deployment".into(),
        ),
        AccountError::Throttled(t) => {
            let (code, wait) = match t {
                Throttled::Address(w) => (ErrorCode::RateLimited, w),
                Throttled::Account(w) => (ErrorCode::AccountLocked, w),
            };
            let mut r = ErrorReply::new(code, "too many attempts; try again later");
            r.retry_after_ms = wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
            return r;
        }
        _ => (ErrorCode::Internal, "internal error".into()),
    };
    let mut r = ErrorReply::new(code, message);
    if code == ErrorCode::Overloaded {
        r.retry_after_ms = 500;
    }
    r
}

fn wrap(
    b: &mut Builder,
    id: u64,
    op_type: AuthOp,
    op: WIPOffset<flatbuffers::UnionWIPOffset>,
) -> WIPOffset<Envelope<'static>> {
    let body = pa::Auth::create(
        b,
        &pa::AuthArgs {
            op_type,
            op: Some(op),
        },
    );
    super::envelope(b, id, Body::Auth, body.as_union_value())
}

fn tokens(
    b: &mut Builder,
    t: &IssuedTokens,
    access_ttl_ms: u64,
    now_ms: u64,
) -> WIPOffset<pa::AuthTokens<'static>> {
    let access = b.create_string(&t.access_token);
    let refresh = b.create_string(&t.refresh_token);
    pa::AuthTokens::create(
        b,
        &pa::AuthTokensArgs {
            user_id: t.user_id,
            session_id: t.session_id,
            access_token: Some(access),
            access_expires_at_ms: now_ms + access_ttl_ms,
            refresh_token: Some(refresh),
            refresh_expires_at_ms: now_ms + REFRESH_TTL.as_millis() as u64,
        },
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a request asks, copied out of the frame so that the work can outlive it.
enum Call {
    Register {
        username: String,
        email: String,
        password: String,
        device: String,
    },
    Login {
        identifier: String,
        password: String,
        totp_code: Option<String>,
        recovery_code: Option<String>,
        device: String,
    },
    TotpEnrol {
        password: String,
    },
    ChangePassword {
        current: String,
        new: String,
        code: Option<String>,
    },
    DeleteAccount {
        password: String,
        code: Option<String>,
    },
    TotpConfirm {
        code: String,
    },
    TotpDisable {
        password: String,
        code: String,
    },
    ResetStart {
        email: String,
    },
    ResetFinish {
        email: String,
        code: String,
        new_password: String,
    },
    RecoveryCodes {
        password: String,
        code: String,
    },
    Refresh {
        token: String,
    },
    Logout,
    Sessions,
    Revoke {
        session_id: u64,
    },
    RevokeOthers,
}

fn device_name(d: Option<pa::DeviceInfo<'_>>) -> String {
    d.and_then(|d| d.name())
        .unwrap_or("unknown device")
        .to_string()
}

fn parse(env: &Envelope<'_>) -> Result<Call, ErrorReply> {
    let auth = env
        .body_as_auth()
        .ok_or_else(|| ErrorReply::new(ErrorCode::UnexpectedMessage, "not an auth request"))?;
    let missing =
        |field: &str| ErrorReply::new(ErrorCode::InvalidArgument, format!("{field} is required"));
    Ok(match auth.op_type() {
        AuthOp::RegisterRequest => {
            let r = auth
                .op_as_register_request()
                .ok_or_else(|| missing("register"))?;
            Call::Register {
                username: r.username().ok_or_else(|| missing("username"))?.to_string(),
                email: r.email().ok_or_else(|| missing("email"))?.to_string(),
                password: r.password().ok_or_else(|| missing("password"))?.to_string(),
                device: device_name(r.device()),
            }
        }
        AuthOp::LoginRequest => {
            let r = auth.op_as_login_request().ok_or_else(|| missing("login"))?;
            Call::Login {
                identifier: r
                    .identifier()
                    .ok_or_else(|| missing("identifier"))?
                    .to_string(),
                password: r.password().ok_or_else(|| missing("password"))?.to_string(),
                totp_code: r.totp_code().map(str::to_string),
                recovery_code: r.recovery_code().map(str::to_string),
                device: device_name(r.device()),
            }
        }
        AuthOp::PasswordResetStartRequest => Call::ResetStart {
            email: auth
                .op_as_password_reset_start_request()
                .and_then(|r| r.email())
                .ok_or_else(|| missing("email"))?
                .to_string(),
        },
        AuthOp::PasswordResetFinishRequest => {
            let r = auth
                .op_as_password_reset_finish_request()
                .ok_or_else(|| missing("reset"))?;
            Call::ResetFinish {
                email: r.email().ok_or_else(|| missing("email"))?.to_string(),
                code: r.code().ok_or_else(|| missing("code"))?.to_string(),
                new_password: r
                    .new_password()
                    .ok_or_else(|| missing("new_password"))?
                    .to_string(),
            }
        }
        AuthOp::PasswordChangeRequest => {
            let r = auth
                .op_as_password_change_request()
                .ok_or_else(|| missing("password change"))?;
            Call::ChangePassword {
                current: r
                    .current_password()
                    .ok_or_else(|| missing("current_password"))?
                    .to_string(),
                new: r
                    .new_password()
                    .ok_or_else(|| missing("new_password"))?
                    .to_string(),
                code: r.totp_code().map(str::to_string),
            }
        }
        AuthOp::AccountDeleteRequest => {
            let r = auth
                .op_as_account_delete_request()
                .ok_or_else(|| missing("account deletion"))?;
            Call::DeleteAccount {
                password: r.password().ok_or_else(|| missing("password"))?.to_string(),
                code: r.totp_code().map(str::to_string),
            }
        }
        AuthOp::TotpEnrollRequest => Call::TotpEnrol {
            password: auth
                .op_as_totp_enroll_request()
                .and_then(|r| r.password())
                .ok_or_else(|| missing("password"))?
                .to_string(),
        },
        AuthOp::TotpConfirmRequest => Call::TotpConfirm {
            code: auth
                .op_as_totp_confirm_request()
                .and_then(|r| r.code())
                .ok_or_else(|| missing("code"))?
                .to_string(),
        },
        AuthOp::TotpDisableRequest => {
            let r = auth
                .op_as_totp_disable_request()
                .ok_or_else(|| missing("totp"))?;
            Call::TotpDisable {
                password: r.password().ok_or_else(|| missing("password"))?.to_string(),
                code: r.code().ok_or_else(|| missing("code"))?.to_string(),
            }
        }
        AuthOp::RecoveryCodesRegenerateRequest => {
            let r = auth
                .op_as_recovery_codes_regenerate_request()
                .ok_or_else(|| missing("recovery"))?;
            Call::RecoveryCodes {
                password: r.password().ok_or_else(|| missing("password"))?.to_string(),
                code: r.code().ok_or_else(|| missing("code"))?.to_string(),
            }
        }
        AuthOp::RefreshRequest => Call::Refresh {
            token: auth
                .op_as_refresh_request()
                .and_then(|r| r.refresh_token())
                .ok_or_else(|| missing("refresh_token"))?
                .to_string(),
        },
        AuthOp::LogoutRequest => Call::Logout,
        AuthOp::SessionsListRequest => Call::Sessions,
        AuthOp::SessionRevokeRequest => Call::Revoke {
            session_id: auth
                .op_as_session_revoke_request()
                .map_or(0, |r| r.session_id()),
        },
        AuthOp::SessionRevokeOthersRequest => Call::RevokeOthers,
        _ => {
            return Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "this auth operation is not available yet",
            ));
        }
    })
}

impl<S: Store + 'static> Service for AuthApi<S> {
    fn owner_key(&self, _caller: Option<u64>, _env: &Envelope<'_>) -> Option<u64> {
        // Claims are linearizable in storage, so any shard may serve any account.
        None
    }

    fn handle(
        &self,
        ctx: RequestContext,
        frame: Frame,
    ) -> LocalBoxFuture<'static, Result<Bytes, ErrorReply>> {
        let env = frame.envelope();
        let id = env.id();
        let call = parse(&env);
        let (users, graph) = (self.users.clone(), self.graph.clone());
        let (accounts, encoder, ttl) = (
            self.accounts.clone(),
            self.encoder.clone(),
            self.access_ttl_ms,
        );
        Box::pin(async move {
            let call = call?;
            let me = || {
                ctx.principal
                    .clone()
                    .ok_or_else(|| ErrorReply::new(ErrorCode::Unauthenticated, "sign in first"))
            };
            let enc = |f: &dyn Fn(&mut Builder) -> WIPOffset<Envelope<'static>>| {
                encoder
                    .borrow_mut()
                    .encode_bytes(f)
                    .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))
            };
            match call {
                Call::Register {
                    username,
                    email,
                    password,
                    device,
                } => {
                    let t = accounts
                        .register(&username, &email, password, &device)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    users.create(t.user_id, &username).await.map_err(|_| {
                        ErrorReply::new(ErrorCode::StorageFailure, "profile not created; retry")
                    })?;
                    let now = now_ms();
                    enc(&|b| {
                        let tk = tokens(b, &t, ttl, now);
                        let name = b.create_string(&username);
                        let user = common::UserSummary::create(
                            b,
                            &common::UserSummaryArgs {
                                user_id: t.user_id,
                                username: Some(name),
                                ..Default::default()
                            },
                        );
                        let r = pa::RegisterResponse::create(
                            b,
                            &pa::RegisterResponseArgs {
                                tokens: Some(tk),
                                user: Some(user),
                            },
                        );
                        wrap(b, id, AuthOp::RegisterResponse, r.as_union_value())
                    })
                }
                Call::Login {
                    identifier,
                    password,
                    totp_code,
                    recovery_code,
                    device,
                } => {
                    let t = accounts
                        .login_with_second_factor(
                            &identifier,
                            password,
                            totp_code.as_deref(),
                            recovery_code.as_deref(),
                            &device,
                            ctx.peer_ip,
                        )
                        .await
                        .map_err(|e| error_reply(&e))?;
                    let now = now_ms();
                    enc(&|b| {
                        let tk = tokens(b, &t, ttl, now);
                        let user = common::UserSummary::create(
                            b,
                            &common::UserSummaryArgs {
                                user_id: t.user_id,
                                ..Default::default()
                            },
                        );
                        let r = pa::LoginResponse::create(
                            b,
                            &pa::LoginResponseArgs {
                                tokens: Some(tk),
                                user: Some(user),
                            },
                        );
                        wrap(b, id, AuthOp::LoginResponse, r.as_union_value())
                    })
                }
                Call::Refresh { token } => {
                    let t = accounts
                        .refresh(&token)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    let now = now_ms();
                    enc(&|b| {
                        let tk = tokens(b, &t, ttl, now);
                        let r = pa::RefreshResponse::create(
                            b,
                            &pa::RefreshResponseArgs { tokens: Some(tk) },
                        );
                        wrap(b, id, AuthOp::RefreshResponse, r.as_union_value())
                    })
                }
                Call::TotpEnrol { password } => {
                    let p = me()?;
                    let (uri, secret) = accounts
                        .totp_enrol(p.user_id, password, "Selfie")
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| {
                        let (u, s) = (b.create_string(&uri), b.create_string(&secret));
                        let r = pa::TotpEnrollResponse::create(
                            b,
                            &pa::TotpEnrollResponseArgs {
                                otpauth_uri: Some(u),
                                secret_base32: Some(s),
                            },
                        );
                        wrap(b, id, AuthOp::TotpEnrollResponse, r.as_union_value())
                    })
                }
                Call::TotpConfirm { code } => {
                    let p = me()?;
                    let codes = accounts
                        .totp_confirm(p.user_id, &code)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| {
                        let list: Vec<_> = codes.iter().map(|c| b.create_string(c)).collect();
                        let list = b.create_vector(&list);
                        let r = pa::TotpConfirmResponse::create(
                            b,
                            &pa::TotpConfirmResponseArgs {
                                recovery_codes: Some(list),
                            },
                        );
                        wrap(b, id, AuthOp::TotpConfirmResponse, r.as_union_value())
                    })
                }
                Call::ResetStart { email } => {
                    accounts
                        .password_reset_start(&email, ctx.peer_ip)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
                Call::ResetFinish {
                    email,
                    code,
                    new_password,
                } => {
                    accounts
                        .password_reset_finish(&email, &code, new_password, ctx.peer_ip)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
                Call::RecoveryCodes { password, code } => {
                    let p = me()?;
                    let codes = accounts
                        .regenerate_recovery_codes(p.user_id, password, &code)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| {
                        let list: Vec<_> = codes.iter().map(|c| b.create_string(c)).collect();
                        let list = b.create_vector(&list);
                        let r = pa::RecoveryCodesResponse::create(
                            b,
                            &pa::RecoveryCodesResponseArgs {
                                recovery_codes: Some(list),
                            },
                        );
                        wrap(b, id, AuthOp::RecoveryCodesResponse, r.as_union_value())
                    })
                }
                Call::TotpDisable { password, code } => {
                    let p = me()?;
                    accounts
                        .totp_disable(p.user_id, password, &code)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
                Call::ChangePassword { current, new, code } => {
                    let p = me()?;
                    accounts
                        .change_password(p.user_id, p.session_id, current, new, code.as_deref())
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
                Call::DeleteAccount { password, code } => {
                    let p = me()?;
                    accounts
                        .confirm_deletion(p.user_id, password, code.as_deref())
                        .await
                        .map_err(|e| error_reply(&e))?;
                    // The owner's other devices are signed out first (nothing acts for
                    // the account while it goes); then the profile is anonymised and
                    // hidden (its posts with it) and the graph edges go, before the
                    // credentials: a failure leaves the account and this session in place,
                    // so the owner can simply retry (every step is idempotent).
                    let retry = || {
                        ErrorReply::new(
                            ErrorCode::StorageFailure,
                            "the account is not deleted yet: try again",
                        )
                    };
                    accounts
                        .revoke_others(p.user_id, p.session_id)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    users.mark_deleted(p.user_id).await.map_err(|_| retry())?;
                    graph.remove_user(p.user_id).await.map_err(|_| retry())?;
                    accounts
                        .erase(p.user_id)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
                Call::Logout => {
                    let p = me()?;
                    accounts
                        .revoke(p.user_id, p.session_id)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
                Call::Sessions => {
                    let p = me()?;
                    let sessions = accounts
                        .sessions(p.user_id)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| {
                        let list: Vec<_> = sessions
                            .iter()
                            .filter(|s| !s.revoked)
                            .map(|s| {
                                let name = b.create_string(&s.device_name);
                                pa::SessionInfo::create(
                                    b,
                                    &pa::SessionInfoArgs {
                                        session_id: s.session_id,
                                        device_name: Some(name),
                                        created_at_ms: s.created_at_ms,
                                        last_seen_at_ms: s.last_seen_at_ms,
                                        current: s.session_id == p.session_id,
                                        ..Default::default()
                                    },
                                )
                            })
                            .collect();
                        let list = b.create_vector(&list);
                        let r = pa::SessionsListResponse::create(
                            b,
                            &pa::SessionsListResponseArgs {
                                sessions: Some(list),
                            },
                        );
                        wrap(b, id, AuthOp::SessionsListResponse, r.as_union_value())
                    })
                }
                Call::Revoke { session_id } => {
                    let p = me()?;
                    // Only the caller's own sessions: another user's id is simply not found.
                    accounts
                        .revoke(p.user_id, session_id)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
                Call::RevokeOthers => {
                    let p = me()?;
                    accounts
                        .revoke_others(p.user_id, p.session_id)
                        .await
                        .map_err(|e| error_reply(&e))?;
                    enc(&|b| build::ack(b, id))
                }
            }
        })
    }
}
