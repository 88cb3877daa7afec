//! Authentication building blocks.
//!
//! - [`tokens`]: short-lived access tokens (PASETO v4.public: Ed25519 signatures, no
//!   algorithm negotiation, so no algorithm confusion) that the edge verifies in memory;
//! - [`password`]: Argon2id (OWASP parameters) on a bounded blocking pool, with a dummy
//!   verification for unknown accounts so that both failures cost the same time;
//! - [`totp`]: RFC 6238 codes with replay protection, and single-use recovery codes.
//!
//! Secrets are never logged and never appear in error messages.

pub mod accounts;
pub mod mail;
pub mod password;
mod reset;
mod second_factor;
pub mod throttle;
pub mod tokens;
pub mod totp;
mod wire;

pub use wire::AuthWire;
