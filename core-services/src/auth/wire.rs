//! The `Auth` service on the wire. Registration, login, refresh and password reset are
//! open to anonymous sessions; everything else needs a signed-in session and acts on its
//! own user only, and runs on the shard that owns that user (one shard orders a user's
//! account writes; the conditional writes in `accounts` keep them exact across nodes).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use selfie_protocol::auth::{self as pa, AuthOp, AuthOpT};
use selfie_protocol::common::UserSummaryT;
use selfie_storage::Store;

use super::accounts::{Accounts, IssuedTokens, REFRESH_TTL};
use crate::plane::{Call, make, service_table, user_ref};
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
    RegisterRequest(op_as_register_request) => register;
    LoginRequest(op_as_login_request) => login;
    RefreshRequest(op_as_refresh_request) => refresh;
    LogoutRequest(op_as_logout_request) => logout, owner |_r, me| me?;
    SessionsListRequest(op_as_sessions_list_request) => sessions, owner |_r, me| me?;
    SessionRevokeRequest(op_as_session_revoke_request) => revoke, owner |_r, me| me?;
    SessionRevokeOthersRequest(op_as_session_revoke_others_request) => revoke_others, owner |_r, me| me?;
    TotpEnrollRequest(op_as_totp_enroll_request) => totp_enrol, owner |_r, me| me?;
    TotpConfirmRequest(op_as_totp_confirm_request) => totp_confirm, owner |_r, me| me?;
    TotpDisableRequest(op_as_totp_disable_request) => totp_disable, owner |_r, me| me?;
    RecoveryCodesRegenerateRequest(op_as_recovery_codes_regenerate_request) => recovery_codes,
        owner |_r, me| me?;
    EmailVerifyRequest(op_as_email_verify_request) => verify_email, owner |_r, me| me?;
    EmailVerifyResendRequest(op_as_email_verify_resend_request) => resend_verification,
        owner |_r, me| me?;
    PasswordChangeRequest(op_as_password_change_request) => change_password, owner |_r, me| me?;
    PasswordResetStartRequest(op_as_password_reset_start_request) => reset_start;
    PasswordResetFinishRequest(op_as_password_reset_finish_request) => reset_finish;
    AccountDeleteRequest(op_as_account_delete_request) => delete_account, owner |_r, me| me?;
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

    async fn register(self, call: &Call, r: pa::RegisterRequest<'_>) -> Result<Bytes> {
        let username = required(r.username(), "username")?;
        let email = required(r.email(), "email")?;
        let password = required(r.password(), "password")?.to_string();
        let register = self.services.register(
            username,
            email,
            password,
            device(r.device()),
            call.ctx.peer_ip,
        );
        let t = register.await?;
        let user = Some(Box::new(make!(UserSummaryT {
            user_id: t.user_id,
            username: Some(username.to_string()),
        })));
        let tokens = self.tokens(t);
        let answer = make!(pa::RegisterResponseT { user, tokens });
        Self::answer(call, AuthOpT::RegisterResponse(Box::new(answer)))
    }

    async fn login(self, call: &Call, r: pa::LoginRequest<'_>) -> Result<Bytes> {
        let t = self
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
            tokens: self.tokens(t),
        });
        Self::answer(call, AuthOpT::LoginResponse(Box::new(answer)))
    }

    async fn refresh(self, call: &Call, r: pa::RefreshRequest<'_>) -> Result<Bytes> {
        let token = required(r.refresh_token(), "refresh_token")?;
        let tokens = self.tokens(self.accounts.refresh(token).await?);
        let answer = make!(pa::RefreshResponseT { tokens });
        Self::answer(call, AuthOpT::RefreshResponse(Box::new(answer)))
    }

    async fn logout(self, call: &Call, _: pa::LogoutRequest<'_>) -> Result<Bytes> {
        let p = call.principal()?;
        self.accounts.revoke(p.user_id, p.session_id).await?;
        call.ack()
    }

    async fn sessions(self, call: &Call, _: pa::SessionsListRequest<'_>) -> Result<Bytes> {
        let p = call.principal()?;
        let sessions = self.accounts.sessions(p.user_id).await?;
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
        Self::answer(call, AuthOpT::SessionsListResponse(Box::new(answer)))
    }

    async fn revoke(self, call: &Call, r: pa::SessionRevokeRequest<'_>) -> Result<Bytes> {
        // Only the caller's own sessions: another user's id is simply not found.
        self.accounts.revoke(call.user()?, r.session_id()).await?;
        call.ack()
    }

    async fn revoke_others(
        self,
        call: &Call,
        _: pa::SessionRevokeOthersRequest<'_>,
    ) -> Result<Bytes> {
        let p = call.principal()?;
        self.accounts.revoke_others(p.user_id, p.session_id).await?;
        call.ack()
    }

    async fn totp_enrol(self, call: &Call, r: pa::TotpEnrollRequest<'_>) -> Result<Bytes> {
        let password = required(r.password(), "password")?.to_string();
        let (uri, secret) = self
            .accounts
            .totp_enrol(call.user()?, password, "Selfie")
            .await?;
        let answer = make!(pa::TotpEnrollResponseT {
            otpauth_uri: Some(uri),
            secret_base32: Some(secret),
        });
        Self::answer(call, AuthOpT::TotpEnrollResponse(Box::new(answer)))
    }

    async fn totp_confirm(self, call: &Call, r: pa::TotpConfirmRequest<'_>) -> Result<Bytes> {
        let code = required(r.code(), "code")?;
        let codes = self.accounts.totp_confirm(call.user()?, code).await?;
        let answer = make!(pa::TotpConfirmResponseT {
            recovery_codes: Some(codes),
        });
        Self::answer(call, AuthOpT::TotpConfirmResponse(Box::new(answer)))
    }

    async fn totp_disable(self, call: &Call, r: pa::TotpDisableRequest<'_>) -> Result<Bytes> {
        let password = required(r.password(), "password")?.to_string();
        let code = required(r.code(), "code")?;
        self.accounts
            .totp_disable(call.user()?, password, code)
            .await?;
        call.ack()
    }

    async fn recovery_codes(
        self,
        call: &Call,
        r: pa::RecoveryCodesRegenerateRequest<'_>,
    ) -> Result<Bytes> {
        let password = required(r.password(), "password")?.to_string();
        let code = required(r.code(), "code")?;
        let accounts = &self.accounts;
        let codes = accounts
            .regenerate_recovery_codes(call.user()?, password, code)
            .await?;
        let answer = make!(pa::RecoveryCodesResponseT {
            recovery_codes: Some(codes),
        });
        Self::answer(call, AuthOpT::RecoveryCodesResponse(Box::new(answer)))
    }

    async fn change_password(self, call: &Call, r: pa::PasswordChangeRequest<'_>) -> Result<Bytes> {
        let p = call.principal()?;
        let current = required(r.current_password(), "current_password")?.to_string();
        let new = required(r.new_password(), "new_password")?.to_string();
        self.accounts
            .change_password(p.user_id, p.session_id, current, new, r.totp_code())
            .await?;
        call.ack()
    }

    async fn verify_email(self, call: &Call, r: pa::EmailVerifyRequest<'_>) -> Result<Bytes> {
        let code = required(r.code(), "code")?;
        self.accounts.verify_email(call.user()?, code).await?;
        call.ack()
    }

    async fn resend_verification(
        self,
        call: &Call,
        _: pa::EmailVerifyResendRequest<'_>,
    ) -> Result<Bytes> {
        let resend = self
            .accounts
            .resend_verification(call.user()?, call.ctx.peer_ip);
        resend.await?;
        call.ack()
    }

    async fn reset_start(self, call: &Call, r: pa::PasswordResetStartRequest<'_>) -> Result<Bytes> {
        let email = required(r.email(), "email")?;
        self.accounts
            .password_reset_start(email, call.ctx.peer_ip)
            .await?;
        call.ack()
    }

    async fn reset_finish(
        self,
        call: &Call,
        r: pa::PasswordResetFinishRequest<'_>,
    ) -> Result<Bytes> {
        let email = required(r.email(), "email")?;
        let code = required(r.code(), "code")?;
        let new = required(r.new_password(), "new_password")?.to_string();
        let finish = self
            .accounts
            .password_reset_finish(email, code, new, call.ctx.peer_ip);
        finish.await?;
        call.ack()
    }

    async fn delete_account(self, call: &Call, r: pa::AccountDeleteRequest<'_>) -> Result<Bytes> {
        let password = required(r.password(), "password")?.to_string();
        let delete = self
            .services
            .delete_account(call.principal()?, password, r.totp_code());
        delete.await?;
        call.ack()
    }
}
