//! The security review's findings, each tried as an attacker or an operator would, against a
//! real server on 127.0.0.1:0 over a real RocksDB in a temp dir (issue 8). One file per promise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

#[path = "attacks/rights.rs"]
mod rights;

#[path = "attacks/flood.rs"]
mod flood;

#[path = "attacks/races.rs"]
mod races;

#[path = "attacks/echo.rs"]
mod echo;

#[path = "attacks/files.rs"]
mod files;

#[path = "attacks/fuzz.rs"]
mod fuzz;

#[path = "attacks/backups.rs"]
mod backups;
#[path = "attacks/limits.rs"]
mod limits;
#[path = "attacks/rotation.rs"]
mod rotation;
#[path = "attacks/transport.rs"]
mod transport;
