//! The Selfie client SDK: connect to an edge over QUIC, typed requests, subscriptions
//! as streams, datagrams, reconnect with resume.
//!
//! It depends on `selfie-protocol` and `selfie-codec` only (plus quinn); never on server
//! crates.
//!
//! Status: not built yet (issue 3); this crate only reserves its place in the workspace.
