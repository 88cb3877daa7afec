//! The `Auth` service on the wire. Registration, login, refresh and password reset are
//! open to anonymous sessions; everything else needs a signed-in session and acts on its
//! own user only. E-mail verification is not offered yet (answered `Unavailable`).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use selfie_protocol::auth::{self as pa, AuthOp, AuthOpT};
use selfie_protocol::common::UserSummaryT;
use selfie_storage::Store;

use super::accounts::{Accounts, IssuedTokens, REFRESH_TTL};
use crate::plane::{Call, make, op, service_table, user_ref};
use crate::workflows::Services;
use crate::{Error, Result};

/// The auth service of one shard, on the wire.
#[derive(Clone)]
pub struct AuthWire<S> {
    accounts: Rc<Accounts<S>>,
    services: Rc<Services<S>>,
    access_ttl: Duration,
}

impl<S: Store + Clone + 'static> AuthWire<S> {
    /// Over one shard's services; access tokens live for `access_ttl`.
    pub fn new(services: Rc<Services<S>>, access_ttl: Duration) -> Self {
        Self {
            accounts: services.accounts.clone(),
            services,
            access_ttl,
        }
    }
}

service_table! {
    impl[S: Store + Clone + 'static] AuthWire<S>;
    body body_as_auth, ops AuthOp, answers AuthOpT in Auth(pa::AuthT);
    RegisterRequest => register;
    LoginRequest => login;
    RefreshRequest => refresh;
    LogoutRequest => logout;
    SessionsListRequest => sessions;
    SessionRevokeRequest => revoke;
    SessionRevokeOthersRequest => revoke_others;
    TotpEnrollRequest => totp_enrol;
    TotpConfirmRequest => totp_confirm;
    TotpDisableRequest => totp_disable;
    RecoveryCodesRegenerateRequest => recovery_codes;
    PasswordChangeRequest => change_password;
    PasswordResetStartRequest => reset_start;
    PasswordResetFinishRequest => reset_finish;
    AccountDeleteRequest => delete_account;
}

/// A required string field.
fn required<'a>(v: Option<&'a str>, field: &'static str) -> Result<&'a str> {
    v.ok_or(Error::InvalidArgument { field })
}

fn device(d: Option<pa::DeviceInfo<'_>>) -> &str {
    d.and_then(|d| d.name()).unwrap_or("unknown device")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<S: Store + Clone + 'static> AuthWire<S> {
    fn tokens(&self, t: IssuedTokens) -> Option<Box<pa::AuthTokensT>> {
        let now = now_ms();
        Some(Box::new(make!(pa::AuthTokensT {
            user_id: t.user_id,
            session_id: t.session_id,
            access_token: Some(t.access_token),
            access_expires_at_ms: now + self.access_ttl.as_millis() as u64,
            refresh_token: Some(t.refresh_token),
            refresh_expires_at_ms: now + REFRESH_TTL.as_millis() as u64,
        })))
    }
}

async fn register<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_register_request);
    let username = required(r.username(), "username")?;
    let t = w
        .services
        .register(
            username,
            required(r.email(), "email")?,
            required(r.password(), "password")?.to_string(),
            device(r.device()),
        )
        .await?;
    let user = Some(Box::new(make!(UserSummaryT {
        user_id: t.user_id,
        username: Some(username.to_string()),
    })));
    let answer = make!(pa::RegisterResponseT {
        user,
        tokens: w.tokens(t),
    });
    AuthWire::<S>::answer(&call, AuthOpT::RegisterResponse(Box::new(answer)))
}

async fn login<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_login_request);
    let t = w
        .accounts
        .login_with_second_factor(
            required(r.identifier(), "identifier")?,
            required(r.password(), "password")?.to_string(),
            r.totp_code(),
            r.recovery_code(),
            device(r.device()),
            call.ctx.peer_ip,
        )
        .await?;
    let answer = make!(pa::LoginResponseT {
        user: user_ref(t.user_id),
        tokens: w.tokens(t),
    });
    AuthWire::<S>::answer(&call, AuthOpT::LoginResponse(Box::new(answer)))
}

async fn refresh<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_refresh_request);
    let t = w
        .accounts
        .refresh(required(r.refresh_token(), "refresh_token")?)
        .await?;
    let answer = make!(pa::RefreshResponseT {
        tokens: w.tokens(t),
    });
    AuthWire::<S>::answer(&call, AuthOpT::RefreshResponse(Box::new(answer)))
}

async fn logout<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let p = call.principal()?;
    w.accounts.revoke(p.user_id, p.session_id).await?;
    call.ack()
}

async fn sessions<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let p = call.principal()?;
    let sessions = w.accounts.sessions(p.user_id).await?;
    let list = sessions.into_iter().filter(|s| !s.revoked);
    let list = list.map(|s| {
        make!(pa::SessionInfoT {
            session_id: s.session_id,
            current: s.session_id == p.session_id,
            device_name: Some(s.device_name),
            created_at_ms: s.created_at_ms,
            last_seen_at_ms: s.last_seen_at_ms,
        })
    });
    let answer = make!(pa::SessionsListResponseT {
        sessions: Some(list.collect()),
    });
    AuthWire::<S>::answer(&call, AuthOpT::SessionsListResponse(Box::new(answer)))
}

async fn revoke<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_session_revoke_request);
    // Only the caller's own sessions: another user's id is simply not found.
    let me = call.user()?;
    w.accounts.revoke(me, r.session_id()).await?;
    call.ack()
}

async fn revoke_others<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let p = call.principal()?;
    w.accounts.revoke_others(p.user_id, p.session_id).await?;
    call.ack()
}

async fn totp_enrol<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_auth.op_as_totp_enroll_request);
    let password = required(r.password(), "password")?.to_string();
    let (uri, secret) = w.accounts.totp_enrol(me, password, "Selfie").await?;
    let answer = make!(pa::TotpEnrollResponseT {
        otpauth_uri: Some(uri),
        secret_base32: Some(secret),
    });
    AuthWire::<S>::answer(&call, AuthOpT::TotpEnrollResponse(Box::new(answer)))
}

async fn totp_confirm<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_auth.op_as_totp_confirm_request);
    let codes = w
        .accounts
        .totp_confirm(me, required(r.code(), "code")?)
        .await?;
    let answer = make!(pa::TotpConfirmResponseT {
        recovery_codes: Some(codes),
    });
    AuthWire::<S>::answer(&call, AuthOpT::TotpConfirmResponse(Box::new(answer)))
}

async fn totp_disable<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_auth.op_as_totp_disable_request);
    let password = required(r.password(), "password")?.to_string();
    w.accounts
        .totp_disable(me, password, required(r.code(), "code")?)
        .await?;
    call.ack()
}

async fn recovery_codes<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let me = call.user()?;
    let r = op!(call, body_as_auth.op_as_recovery_codes_regenerate_request);
    let password = required(r.password(), "password")?.to_string();
    let codes = w
        .accounts
        .regenerate_recovery_codes(me, password, required(r.code(), "code")?)
        .await?;
    let answer = make!(pa::RecoveryCodesResponseT {
        recovery_codes: Some(codes),
    });
    AuthWire::<S>::answer(&call, AuthOpT::RecoveryCodesResponse(Box::new(answer)))
}

async fn change_password<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_password_change_request);
    let p = call.principal()?;
    let current = required(r.current_password(), "current_password")?.to_string();
    let new = required(r.new_password(), "new_password")?.to_string();
    w.accounts
        .change_password(p.user_id, p.session_id, current, new, r.totp_code())
        .await?;
    call.ack()
}

async fn reset_start<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_password_reset_start_request);
    w.accounts
        .password_reset_start(required(r.email(), "email")?, call.ctx.peer_ip)
        .await?;
    call.ack()
}

async fn reset_finish<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_password_reset_finish_request);
    let new = required(r.new_password(), "new_password")?.to_string();
    w.accounts
        .password_reset_finish(
            required(r.email(), "email")?,
            required(r.code(), "code")?,
            new,
            call.ctx.peer_ip,
        )
        .await?;
    call.ack()
}

async fn delete_account<S: Store + Clone + 'static>(w: AuthWire<S>, call: Call) -> Result<Bytes> {
    let r = op!(call, body_as_auth.op_as_account_delete_request);
    let password = required(r.password(), "password")?.to_string();
    w.services
        .delete_account(call.principal()?, password, r.totp_code())
        .await?;
    call.ack()
}
