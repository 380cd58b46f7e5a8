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
        Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
        Error::Internal(detail) => {
            tracing::error!(request_id, %detail, "internal error");
            Status::internal(format!("internal error (request id {request_id})"))
        }
        Error::InvalidArgument(input) => Status::from(input),
        Error::NoSuchHold(msg) => Status::not_found(msg),
        Error::NoSuchProposal(id) => Status::not_found(format!("no pending policy change {id}")),
        Error::NoSuchVersion(v) => Status::not_found(format!("no policy version {v}")),
        Error::NotFound => Status::not_found("record not found"),
        Error::PermissionDenied(msg) => Status::permission_denied(msg),
        Error::ResourceExhausted(msg) => Status::resource_exhausted(msg),
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
        Status::invalid_argument(bounded(
            &redact_quoted(&format!("{}: {}", e.field, e.problem)),
            MAX_MESSAGE_BYTES,
        ))
    }
}

/// The longest status message sent for invalid input.
const MAX_MESSAGE_BYTES: usize = 1024;
/// The longest `detail` of a failed call's audit event.
pub(super) const MAX_DETAIL_BYTES: usize = 256;

/// Whether a quoted name may be repeated back: a lowercase identifier, optionally namespaced or
/// dotted (`customers.email`, `role:support`, `customers.*`), at most 64 bytes. Such a name
/// cannot hold an SSN, a phone number, an email address or a long text.
fn is_echoable(s: &str) -> bool {
    s.len() <= 64
        && s.split([':', '.']).all(|part| {
            part == "*"
                || (part.starts_with(|c: char| c.is_ascii_lowercase())
                    && part
                        .bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_')))
        })
}

/// Replaces every `"quoted"` part of a message (the `{:?}` form of something the caller sent,
/// as the policy parser quotes the token it rejects) with `<value not shown>` unless it is a
/// bounded identifier: messages name the input and the rule broken, never the caller's value.
/// This is the last guard at the edge; the messages themselves are written not to quote values.
pub(super) fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_BYTES));
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let quoted = &rest[start + 1..];
        // The closing quote is the first one not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else {
            // An unterminated quote: everything after it is dropped.
            out.push_str("<value not shown>");
            return out;
        };
        let inner = &quoted[..end];
        if is_echoable(inner) {
            out.push('"');
            out.push_str(inner);
            out.push('"');
        } else {
            out.push_str("<value not shown>");
        }
        rest = &quoted[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub(super) fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
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
    let (status, event) = failure(principal, call, known, e);
    record_failures(audit, call, vec![event]).await;
    Err(status)
}

/// A failure's status, and the event that records it.
pub(super) fn failure(
    principal: &Principal,
    call: &Call,
    known: Known,
    e: Error,
) -> (Status, Event) {
    let status = to_status(e, &call.request_id);
    let event = Event {
        collection: known.collection,
        record_id: known.record_id,
        purpose: known.purpose,
        result: code_name(status.code()).to_owned(),
        // Our own text only: the message names inputs and rules, quoted values are redacted,
        // and its length is bounded whatever the caller sent.
        detail: bounded(&redact_quoted(status.message()), MAX_DETAIL_BYTES),
        ..call.event(principal)
    };
    (status, event)
}

/// Records the events of failures (durably, best effort: the failures are answered anyway).
pub(super) async fn record_failures(audit: &Audit, call: &Call, events: Vec<Event>) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = audit.commit(Batch::new(), events).await {
        tracing::error!(request_id = %call.request_id, error = %e, "the event of a failed call was not recorded");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_redacted_unless_bounded_identifiers() {
        let ssn = format!("{:?}", "123-45-6789");
        let tricky = format!("{:?}", "a\"b, \"123-45-6789");
        let long = format!("{:?}", "a".repeat(65));
        for (message, want) in [
            (
                format!("line 2: unknown action {ssn}: use read"),
                "line 2: unknown action <value not shown>: use read",
            ),
            (
                format!("object {tricky} must be x"),
                "object <value not shown> must be x",
            ),
            (format!("role {long}!"), "role <value not shown>!"),
            (
                "object \"customers.email\" and \"role:support\" and \"customers.*\"".into(),
                "object \"customers.email\" and \"role:support\" and \"customers.*\"",
            ),
            (
                "unterminated \"123-45-6789".into(),
                "unterminated <value not shown>",
            ),
            ("no quotes at all".into(), "no quotes at all"),
        ] {
            assert_eq!(redact_quoted(&message), want);
        }
    }

    #[test]
    fn bounded_cuts_on_a_char_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with("..."), "{cut}");
        let status = Status::from(InvalidInput::new("purpose", "x".repeat(1 << 20)));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
    }
}
