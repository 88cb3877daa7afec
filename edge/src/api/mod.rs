//! Protocol adapters for the domain services: decode a verified request, call the
//! shard-local service, encode the answer. No domain logic here.

pub mod auth;
pub mod posts;
pub mod social;
