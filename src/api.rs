//! The gRPC boundary: one file per service, the authentication interceptor, conversions from
//! protobuf to domain types, and the one mapping from errors to `tonic::Status`.
//!
//! With `server.rs` and `client.rs`, the only code that names tonic or prost types.

mod audit;
pub mod auth;
mod convert;
pub mod health;
mod policies;
mod records;
pub mod status;
mod tokens;

pub use audit::AuditApi;
pub use policies::PoliciesApi;
pub use records::RecordsApi;
pub use tokens::TokensApi;

/// The generated protobuf and gRPC code for `strongroom.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("strongroom.v1");

    /// The encoded descriptor set of `strongroom.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/strongroom_descriptor.bin"));
}
