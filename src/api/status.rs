//! The one mapping from errors to `tonic::Status`. Internal detail goes to the log under a
//! request id; the client sees the id, never the detail.

use rand::RngCore;
use tonic::{Code, Status};

use crate::{domain::InvalidInput, vault::Error};

fn request_id() -> String {
    format!("{:016x}", rand::thread_rng().next_u64())
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Aborted(msg) => Status::aborted(msg),
            Error::DataLoss => {
                let id = request_id();
                tracing::error!(request_id = %id, "integrity check failed; no data returned");
                Status::new(
                    Code::DataLoss,
                    format!("stored data failed its integrity check (request id {id})"),
                )
            }
            Error::Internal(detail) => {
                let id = request_id();
                tracing::error!(request_id = %id, %detail, "internal error");
                Status::internal(format!("internal error (request id {id})"))
            }
            Error::InvalidArgument(input) => Status::from(input),
            Error::NoSuchVersion(v) => Status::not_found(format!("no policy version {v}")),
            Error::NotFound => Status::not_found("record not found"),
            Error::PermissionDenied(msg) => Status::permission_denied(msg),
            Error::Unavailable(detail) => {
                let id = request_id();
                tracing::error!(request_id = %id, %detail, "storage unavailable");
                Status::unavailable(format!(
                    "storage unavailable; nothing was written (request id {id})"
                ))
            }
        }
    }
}

impl From<InvalidInput> for Status {
    fn from(e: InvalidInput) -> Self {
        Status::invalid_argument(format!("{}: {}", e.field, e.problem))
    }
}
