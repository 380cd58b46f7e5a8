//! The gRPC boundary: one file per service, the authentication interceptor, conversions from
//! protobuf to domain types, and the one mapping from errors to `tonic::Status`.
//!
//! With `server.rs` and `client.rs`, the only code that names tonic or prost types.

mod audit;
pub mod auth;
pub mod connections;
mod consent;
mod convert;
pub mod health;
mod holds;
mod keys;
mod policies;
mod records;
mod retention;
pub mod status;
mod tokens;

pub use audit::AuditApi;
pub use consent::ConsentApi;
pub use holds::HoldsApi;
pub use keys::KeysApi;
pub use policies::PoliciesApi;
pub use records::RecordsApi;
pub use retention::RetentionApi;
pub use tokens::TokensApi;

/// Runs a use case that changes shared state (tokens, the policy) in a task of its own, so that
/// a caller who cancels (a dropped connection, a deadline) cannot cut it between its durable
/// commit and the in-memory change that follows: what the log says was done is what runs.
///
/// # Errors
/// The use case's error; `Internal` if its task panicked.
async fn to_completion<T, F>(change: F) -> Result<T, crate::vault::Error>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, crate::vault::Error>> + Send + 'static,
{
    tokio::spawn(change)
        .await
        .map_err(|e| crate::vault::Error::Internal(format!("a change task failed: {e}")))?
}

/// The generated protobuf and gRPC code for `strongroom.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("strongroom.v1");

    /// The encoded descriptor set of `strongroom.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/strongroom_descriptor.bin"));
}
