//! Outgoing e-mail, as the accounts service needs it (e-mail verification codes, the
//! warning to an address's owner, password-reset codes). This crate
//! only defines the seam; the edge fills it with an SMTP client (no sockets here).

/// Why a message was not handed over.
#[derive(Debug, thiserror::Error)]
#[error("mail not sent: {0}")]
pub struct MailError(pub String);

/// One message to one recipient, plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Sends mail (an SMTP relay in production).
pub trait Mailer: Send + Sync {
    /// Hands `mail` to the relay.
    fn send(&self, mail: Mail) -> crate::BoxFuture<'_, Result<(), MailError>>;
}
