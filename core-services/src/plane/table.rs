//! The service table: one declaration per service, from which the edge's dispatch and
//! owner routing are derived (rustls' `enum_builder!` is the model: declare once, derive
//! the rest).
//!
//! ```text
//! service_table! {
//!     impl[S: Store + 'static] PostsWire<S>;
//!     body body_as_posts, ops PostsOp, answers PostsOpT in Posts(pp::PostsT),
//!         subscribe subscribe_post;                   // optional
//!     GetPostRequest(op_as_get_post_request) => get;  // runs on the receiving shard
//!     ReactRequest(op_as_react_request) => react, owner |r, _me| r.target_id();
//! }
//! ```
//!
//! A row names the operation, the accessor that reads its request in place, the handler
//! (a method `async fn(self, &Call, Request<'_>) -> Result<Bytes>`), and optionally the
//! key whose owner shard runs it: an expression over the request `r` and the caller
//! `_me: Option<u64>` (`?` works inside it). The macro also gives the wire type an
//! `answer(call, op)` helper that wraps an answer (the object-API value of the service's
//! union) in its service table and envelope. Operations without a row are answered
//! `Unavailable`.

macro_rules! service_table {
    (
        impl[$($gen:tt)*] $wire:ty;
        body $body:ident, ops $Op:ident, answers $OpT:ident in $Variant:ident($TableT:path)
            $(, subscribe $sub:path)?;
        $( $variant:ident($acc:ident) => $handler:ident
            $(, owner |$r:ident, $me:ident| $owner:expr)? ; )*
    ) => {
        impl<$($gen)*> $crate::plane::Service for $wire {
            #[allow(unused_variables)]
            fn owner_key(
                &self,
                caller: Option<u64>,
                env: &selfie_protocol::Envelope<'_>,
            ) -> Option<u64> {
                let table = env.$body()?;
                match table.op_type() {
                    $($(
                        $Op::$variant => {
                            let ($r, $me) = (table.$acc()?, caller);
                            Some($owner)
                        }
                    )?)*
                    _ => None,
                }
            }

            fn handle(
                &self,
                call: $crate::plane::Call,
            ) -> futures::future::LocalBoxFuture<'static, $crate::Result<bytes::Bytes>> {
                let wire = self.clone();
                match call.env().$body().map(|t| t.op_type()) {
                    $( Some($Op::$variant) => Box::pin(async move {
                        let request = call.op(|e| e.$body()?.$acc())?;
                        let answer = wire.$handler(&call, request).await;
                        #[cfg(debug_assertions)]
                        if let Ok(bytes) = &answer {
                            $crate::plane::check_declared_answer(&call, bytes);
                        }
                        answer
                    }), )*
                    _ => Box::pin(async { Err($crate::Error::Unavailable("this operation")) }),
                }
            }

            $(
                fn subscribe(
                    &self,
                    kind: selfie_protocol::control::SubscriptionKind,
                    call: $crate::plane::Call,
                ) -> futures::future::LocalBoxFuture<'static, $crate::Result<$crate::plane::Subscription>> {
                    Box::pin($sub(self.clone(), kind, call))
                }
            )?
        }

        impl<$($gen)*> $wire {
            /// Encodes `op` as the answer to `call`.
            #[allow(dead_code)]
            fn answer(call: &$crate::plane::Call, op: $OpT) -> $crate::Result<bytes::Bytes> {
                let mut table = <$TableT>::default();
                table.op = op;
                call.answer(selfie_protocol::BodyT::$Variant(Box::new(table)))
            }
        }
    };
}

/// Debug builds (every test): the answer a handler gave must be the operation its
/// request's schema names (`answer: "..."`), which the TypeScript SDK's typed operations
/// are generated from. A mismatch is a defect in the handler or the schema, never input.
#[cfg(debug_assertions)]
pub(crate) fn check_declared_answer(call: &crate::plane::Call, answer: &bytes::Bytes) {
    let limits = selfie_codec::Limits {
        max_frame_bytes: usize::MAX >> 1,
        max_apparent_size: usize::MAX >> 1,
        max_tables: usize::MAX >> 1,
        max_depth: 1024,
        ..selfie_codec::Limits::DEFAULT
    };
    let request = call.env();
    let declared = selfie_protocol::declared_answer(&request);
    let asked = selfie_protocol::operation(&request);
    let Ok(frame) = selfie_codec::Frame::verify(answer.clone(), &limits) else {
        panic!("{asked:?} was answered with bytes that are not a frame");
    };
    let got = selfie_protocol::operation(&frame.envelope());
    let want = match (declared, asked) {
        (Some("Ack"), _) => Some(("Control", "Ack")),
        (Some(op), Some((service, _))) => Some((service, op)),
        _ => None,
    };
    assert!(
        want.is_some() && got == want,
        "{asked:?} was answered with {got:?}, but its schema names {declared:?}"
    );
}

/// Maps a domain enum to its wire enum and back, variant by variant (same names):
/// `wire_enum!(audience, wire_audience: Audience <=> WireAudience, "audience" { Public, ... })`
/// gives `audience(WireAudience) -> Result<Audience>` (an unknown value is
/// `InvalidArgument` on the named field) and `wire_audience(Audience) -> WireAudience`.
macro_rules! wire_enum {
    ($from:ident, $to:ident: $Domain:ident <=> $Wire:ident, $field:literal { $($v:ident),* $(,)? }) => {
        fn $from(w: $Wire) -> $crate::Result<$Domain> {
            $( if w == $Wire::$v { return Ok($Domain::$v); } )*
            Err($crate::Error::InvalidArgument { field: $field })
        }

        #[allow(dead_code)]
        fn $to(d: $Domain) -> $Wire {
            match d { $( $Domain::$v => $Wire::$v, )* }
        }
    };
}

pub(crate) use service_table;
pub(crate) use wire_enum;

/// Builds an object-API value from the fields given, the rest default. (flatc makes the
/// object-API structs `#[non_exhaustive]`, so other crates cannot use struct literals.)
/// `make!(pp::PostCountsT { reactions: 3, comments })` — `field` alone takes the variable
/// of that name.
macro_rules! make {
    ($T:path { $($f:ident $(: $v:expr)?),* $(,)? }) => {{
        type Made = $T;
        let mut made = Made::default();
        $( $crate::plane::make!(@set made, $f $(, $v)?); )*
        made
    }};
    (@set $made:ident, $f:ident, $v:expr) => {
        $made.$f = $v;
    };
    (@set $made:ident, $f:ident) => {
        $made.$f = $f;
    };
}

pub(crate) use make;
