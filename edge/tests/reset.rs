//! Password reset by e-mail, end to end: a real edge, the real SDK, lettre speaking SMTP
//! to a real SMTP server (Python's `aiosmtpd`, printing what it receives).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use selfie_client::{Client, ClientError};
use selfie_edge::mail::SmtpMailer;
use selfie_protocol::auth::{self as pa, AuthOpT};
use selfie_protocol::{BodyT, ErrorCode};
use support::{auth, call, config, sign_up, start_with, tokens};

/// `aiosmtpd` on a free port, its output collected.
struct SmtpSink {
    child: Child,
    port: u16,
    out: Arc<Mutex<String>>,
}

impl SmtpSink {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new("python3")
            .args(["-u", "-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Debugging"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd must be installed (pip install aiosmtpd==1.4.6)");
        let out = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, out }
    }

    fn received(&self) -> String {
        self.out.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for the `n`th reset message and returns the code it carries.
    async fn code(&self, n: usize) -> String {
        self.code_after("Your code: ", n).await
    }

    /// Waits for the `n`th line starting with `prefix` and returns what follows.
    async fn code_after(&self, prefix: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.received();
            let codes: Vec<String> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix(prefix))
                .map(str::to_string)
                .collect();
            if codes.len() >= n {
                return codes[n - 1].clone();
            }
            assert!(Instant::now() < deadline, "no mail arrived:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn reset_start(c: &Client, email: &str) -> Result<BodyT, ClientError> {
    let mut r = pa::PasswordResetStartRequestT::default();
    r.email = Some(email.into());
    call(c, auth(AuthOpT::PasswordResetStartRequest(Box::new(r)))).await
}

async fn reset_finish(
    c: &Client,
    email: &str,
    code: &str,
    password: &str,
) -> Result<BodyT, ClientError> {
    let mut r = pa::PasswordResetFinishRequestT::default();
    r.email = Some(email.into());
    r.code = Some(code.into());
    r.new_password = Some(password.into());
    call(c, auth(AuthOpT::PasswordResetFinishRequest(Box::new(r)))).await
}

async fn login(c: &Client, name: &str, password: &str) -> Result<BodyT, ClientError> {
    let mut r = pa::LoginRequestT::default();
    r.identifier = Some(name.into());
    r.password = Some(password.into());
    call(c, auth(AuthOpT::LoginRequest(Box::new(r)))).await
}

#[tokio::test]
async fn a_mailed_code_resets_the_password_once_and_signs_out_every_session() {
    let smtp = SmtpSink::start();
    let mut parts = support::parts();
    parts.mailer = Some(Arc::new(
        SmtpMailer::new(
            &format!("smtp://127.0.0.1:{}", smtp.port),
            "Selfie <no-reply@example.com>",
        )
        .expect("mailer"),
    ));
    let t = tokens(&parts);
    let throttle = selfie_services::auth::throttle::LoginThrottle::new(parts.throttle);
    let node = start_with(&parts, t, throttle);
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let rita = sign_up(&node, &anon, "rita").await;
    // Resets go to verified addresses only: the code mailed at sign-up verifies it.
    let verify = smtp
        .code_after("Your code to verify this address: ", 1)
        .await;
    let mut r = pa::EmailVerifyRequestT::default();
    r.code = Some("AAAAAAAAAA".into());
    let err = call(
        &rita.client,
        auth(AuthOpT::EmailVerifyRequest(Box::new(r.clone()))),
    )
    .await
    .expect_err("wrong code");
    assert_eq!(err.code(), Some(ErrorCode::InvalidCredentials));
    r.code = Some(verify.to_lowercase());
    call(&rita.client, auth(AuthOpT::EmailVerifyRequest(Box::new(r))))
        .await
        .expect("address verified (codes are typed in any case)");
    // The same answer for an address with and without an account; one mail only.
    reset_start(&anon, "nobody@example.com")
        .await
        .expect("no account: same answer");
    reset_start(&anon, "RITA@example.com")
        .await
        .expect("reset started");
    let code = smtp.code(1).await;
    // A second request (by anyone) does not void the first code.
    reset_start(&anon, "rita@example.com").await.expect("again");
    let second = smtp.code(2).await;
    assert_ne!(code, second);
    assert_eq!(code.len(), 10);
    let mail = smtp.received();
    assert!(mail.contains("rita@example.com"), "{mail}");
    assert!(!mail.contains("nobody@example.com"), "{mail}");
    assert_eq!(mail.matches("Your code: ").count(), 2, "{mail}");
    // A wrong code is refused like a wrong password.
    let err = reset_finish(
        &anon,
        "rita@example.com",
        "AAAAAAAAAA",
        "a brand new secret",
    )
    .await
    .expect_err("wrong code");
    assert_eq!(err.code(), Some(ErrorCode::InvalidCredentials));
    // A refused new password does not spend the code.
    let err = reset_finish(&anon, "rita@example.com", &code, "short")
        .await
        .expect_err("too short");
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument));
    // The right one sets the password and signs out every session.
    reset_finish(&anon, "rita@example.com", &code, "a brand new secret")
        .await
        .expect("reset");
    tokio::time::timeout(Duration::from_secs(5), rita.client.connection().closed())
        .await
        .expect("the old session was closed");
    let err = login(&anon, "rita", &rita.password)
        .await
        .expect_err("the old password is gone");
    assert_eq!(err.code(), Some(ErrorCode::InvalidCredentials));
    login(&anon, "rita", "a brand new secret")
        .await
        .expect("the new one works");
    // The code works once.
    let err = reset_finish(&anon, "rita@example.com", &code, "yet another secret")
        .await
        .expect_err("used");
    assert_eq!(err.code(), Some(ErrorCode::InvalidCredentials));
}

#[tokio::test]
async fn without_a_mail_relay_resets_are_unavailable() {
    let node = support::start();
    let anon = Client::connect(config(&node, None)).await.expect("session");
    let err = reset_start(&anon, "someone@example.com")
        .await
        .expect_err("no relay");
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
}
