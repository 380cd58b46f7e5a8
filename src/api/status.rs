//! The one mapping from errors to `tonic::Status`, and the auditing of failed calls. Internal
//! detail goes to the log under the request id; the client sees the id, never the detail.

use tonic::{Code, Status};

use crate::{
    audit::{Audit, Call, Event},
    domain::{InvalidInput, Principal},
    storage::Batch,
    vault::Error,
};

/// The status for `e`, naming `request_id` where the detail stays in the log.
pub fn to_status(e: Error, request_id: &str) -> Status {
    match e {
        Error::Aborted(msg) => Status::aborted(msg),
        Error::DataLoss => {
            tracing::error!(request_id, "integrity check failed; no data returned");
            Status::new(
                Code::DataLoss,
                format!("stored data failed its integrity check (request id {request_id})"),
            )
        }
        Error::Internal(detail) => {
            tracing::error!(request_id, %detail, "internal error");
            Status::internal(format!("internal error (request id {request_id})"))
        }
        Error::InvalidArgument(input) => Status::from(input),
        Error::NoSuchVersion(v) => Status::not_found(format!("no policy version {v}")),
        Error::NotFound => Status::not_found("record not found"),
        Error::PermissionDenied(msg) => Status::permission_denied(msg),
        Error::Unavailable(detail) => {
            tracing::error!(request_id, %detail, "storage or audit log unavailable");
            Status::unavailable(format!(
                "storage or audit log unavailable; nothing was returned or written (request id {request_id})"
            ))
        }
    }
}

impl From<InvalidInput> for Status {
    fn from(e: InvalidInput) -> Self {
        Status::invalid_argument(format!("{}: {}", e.field, e.problem))
    }
}

/// The canonical name of a status code, as the audit log records it.
pub(super) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Aborted => "ABORTED",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::Cancelled => "CANCELLED",
        Code::DataLoss => "DATA_LOSS",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Internal => "INTERNAL",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::Ok => "OK",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::Unavailable => "UNAVAILABLE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Unknown => "UNKNOWN",
    }
}

/// What a failed call's event can say about its target: only validated names and ids.
#[derive(Debug, Clone, Default)]
pub(super) struct Known {
    pub(super) collection: String,
    pub(super) record_id: String,
    pub(super) purpose: String,
}

/// Passes a success through; for a failure, records its event (durably, best effort) and
/// returns its status.
pub(super) async fn audited<T>(
    audit: &Audit,
    principal: &Principal,
    call: &Call,
    known: Known,
    result: Result<T, Error>,
) -> Result<T, Status> {
    let e = match result {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let status = to_status(e, &call.request_id);
    let event = Event {
        collection: known.collection,
        record_id: known.record_id,
        purpose: known.purpose,
        result: code_name(status.code()).to_owned(),
        detail: status.message().to_owned(),
        ..call.event(principal)
    };
    if let Err(e) = audit.commit(Batch::new(), vec![event]).await {
        tracing::error!(request_id = %call.request_id, error = %e, "the event of a failed call was not recorded");
    }
    Err(status)
}

/// For calls whose use case records no event of its own (reads of the policy or the log):
/// records one event for the call, success or failure, then passes the result on.
pub(super) async fn recorded<T>(
    audit: &Audit,
    principal: &Principal,
    call: &Call,
    result: Result<T, Error>,
) -> Result<T, Status> {
    if result.is_ok()
        && let Err(e) = audit
            .commit(Batch::new(), vec![call.event(principal)])
            .await
    {
        // Fail closed: what the caller asked for is not returned unless its event is durable.
        return Err(to_status(Error::from(e), &call.request_id));
    }
    audited(audit, principal, call, Known::default(), result).await
}
