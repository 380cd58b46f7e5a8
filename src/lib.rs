//! strongroom: an encrypted customer-record vault.
//!
//! Layers, from the outside in (each depends only on those below it):
//!
//! - `cli` parses the command line and runs `server` or `client`;
//! - `server` is the composition root: store, keys, schema, policy, tokens, gRPC services;
//! - `api` is the gRPC boundary (tonic/prost live only here, in `server` and in `client`);
//! - `vault` holds the record use cases: create, read, update, crypto-shred; `governance`
//!   the policy administration ones (versions, apply, rollback, diff, dry-run, explain);
//! - `policy` (casbin, compiled into a decision table), `crypto` (envelope encryption),
//!   `tokens` (bearer tokens), `storage` (RocksDB behind a trait);
//! - `domain` holds the types that cannot hold invalid values; no I/O.

pub mod api;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod governance;
pub mod policy;
pub mod server;
pub mod storage;
pub mod tokens;
pub mod vault;

#[cfg(test)]
mod testing;
