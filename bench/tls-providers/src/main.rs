//! `selfie-tls-providers`: what one TLS 1.3 handshake costs in CPU with each rustls
//! crypto provider, `ring` (what the edge and the SDK use) and `aws-lc-rs`, so that the
//! edge's choice is measured rather than assumed (issue 16).
//!
//! Client and server run in one thread and exchange their flights in memory, so the
//! figures are the handshake's own work (key exchange, the server's ECDSA P-256
//! signature, the client's verification, the key schedule) without sockets or QUIC.
//! Each side's time is summed separately. The certificate is the edge's kind of
//! development certificate (rcgen's default: ECDSA P-256), checked by the client the
//! way the SDK's pinned verifier does (a digest comparison and the handshake
//! signature). Full handshakes have resumption off; resumed ones reuse a ticket.
//!
//! ```text
//! cargo run --release --manifest-path bench/tls-providers/Cargo.toml -- [handshakes] [runs]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, ServerConnection, SignatureScheme};

/// Accepts exactly `cert`, verifying handshake signatures with the provider's algorithms
/// (the SDK's pinned verifier compares a SHA-256 of the certificate instead: a
/// byte comparison here costs no more).
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A provider to compare.
struct Candidate {
    name: &'static str,
    provider: Arc<CryptoProvider>,
}

fn candidates() -> Vec<Candidate> {
    let aws = rustls::crypto::aws_lc_rs::default_provider();
    let mut aws_x25519 = rustls::crypto::aws_lc_rs::default_provider();
    aws_x25519
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    vec![
        Candidate {
            name: "ring (X25519)",
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        },
        Candidate {
            name: "aws-lc-rs (X25519)",
            provider: Arc::new(aws_x25519),
        },
        Candidate {
            name: "aws-lc-rs (default: X25519MLKEM768)",
            provider: Arc::new(aws),
        },
    ]
}

/// Moves every pending flight between the two until both are done; returns the time
/// each side spent (client, server).
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> anyhow::Result<(Duration, Duration)> {
    let (mut c, mut s) = (Duration::ZERO, Duration::ZERO);
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..16 {
        let t = Instant::now();
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf)?;
        }
        c += t.elapsed();
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd)?;
            server.process_new_packets()?;
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf)?;
        }
        s += t.elapsed();
        let t = Instant::now();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd)?;
            client.process_new_packets()?;
        }
        c += t.elapsed();
        if !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write()
        {
            return Ok((c, s));
        }
    }
    anyhow::bail!("the handshake did not complete")
}

/// Client and server µs per handshake over `n` handshakes.
fn measure(
    cand: &Candidate,
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    n: usize,
    resumed: bool,
) -> anyhow::Result<(f64, f64)> {
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(cand.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.clone_key())?,
    );
    let mut client = rustls::ClientConfig::builder_with_provider(cand.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            cert: cert.clone(),
            provider: cand.provider.clone(),
        }))
        .with_no_client_auth();
    if !resumed {
        client.resumption = rustls::client::Resumption::disabled();
    }
    let client = Arc::new(client);
    let name = ServerName::try_from("localhost")?;
    // Warm-up (and, for resumed handshakes, the first ticket).
    for _ in 0..20 {
        let mut c = ClientConnection::new(client.clone(), name.clone())?;
        let mut s = ServerConnection::new(server.clone())?;
        handshake(&mut c, &mut s)?;
    }
    let (mut ct, mut st) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let mut c = ClientConnection::new(client.clone(), name.clone())?;
        let mut s = ServerConnection::new(server.clone())?;
        let (a, b) = handshake(&mut c, &mut s)?;
        ct += a;
        st += b;
        if resumed {
            anyhow::ensure!(
                c.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                "expected a resumed handshake"
            );
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    Ok((per(ct), per(st)))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.self_signed(&key_pair)?;
    let cert = cert.der().clone();
    let key = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    println!(
        "TLS 1.3 handshakes in memory, ECDSA P-256 certificate, {n} per run, {runs} runs; µs of CPU per handshake (client / server)"
    );
    for resumed in [false, true] {
        println!(
            "{}",
            if resumed {
                "resumed (ticket):"
            } else {
                "full:"
            }
        );
        let mut ring_server = Vec::new();
        for cand in candidates() {
            let mut line = format!("  {:<38}", cand.name);
            let mut servers = Vec::new();
            for run in 0..runs {
                let (c, s) = measure(&cand, &cert, &key, n, resumed)?;
                line.push_str(&format!(" {c:7.1} / {s:7.1}"));
                servers.push(s);
                if cand.name.starts_with("ring") {
                    ring_server.push(s);
                }
                let _ = run;
            }
            if !cand.name.starts_with("ring") {
                let ratios: Vec<String> = servers
                    .iter()
                    .zip(&ring_server)
                    .map(|(s, r)| format!("{:.2}x", s / r))
                    .collect();
                line.push_str(&format!("   server ÷ ring: {}", ratios.join(" ")));
            }
            println!("{line}");
        }
    }
    Ok(())
}
