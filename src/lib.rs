//! strongroom: an encrypted customer-record vault.
//!
//! Layers, from the outside in (each depends only on those below it):
//!
//! - `cli` parses the command line and runs `server` or `client`;
//! - `server` is the composition root: store, keys, schema, policy, tokens, gRPC services;
//! - `api` is the gRPC boundary (tonic/prost live only here, in `server` and in `client`);
//! - `vault` is the one home of the use cases: records (create, read, update, crypto-shred),
//!   `vault::tokens` (issue, list, revoke bearer tokens), `vault::governance` (policy versions,
//!   apply, rollback, diff, dry-run, explain), and the role checks of all of them;
//! - `policy` (casbin, compiled into a decision table), `crypto` (envelope encryption),
//!   `audit` (the chained log), `storage` (RocksDB behind a trait);
//! - `domain` holds the types that cannot hold invalid values; no I/O.

pub mod api;
pub mod audit;
pub mod bench;
pub mod bytes;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod files;
pub mod policy;
pub mod server;
pub mod storage;
pub mod tls;
pub mod vault;

#[cfg(test)]
mod testing;
