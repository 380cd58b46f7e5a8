//! The `Audit` service: query, follow, verify and export the audit log (auditors and admins).
//! Each call is itself an audit event.

use std::{pin::Pin, sync::Arc};

use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{
    auth::{credential, principal},
    pb::{self, audit_server::Audit as AuditService},
    status::recorded,
};
use crate::{
    audit::{self, Audit, Call, Event, Filter},
    domain::Principal,
    policy::PolicyEngine,
    vault::{
        Privilege, require,
        tokens::{Credential, Rejection},
    },
};

/// The `Audit` gRPC service.
#[derive(Debug, Clone)]
pub struct AuditApi {
    audit: Arc<Audit>,
    policy: Arc<PolicyEngine>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl AuditApi {
    /// The service over the log.
    /// Live streams end when `stopping` turns true, so a follower never holds up shutdown.
    /// Who may read it is decided by the live `policy`.
    pub fn new(
        audit: Arc<Audit>,
        policy: Arc<PolicyEngine>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            audit,
            policy,
            stopping,
        }
    }

    /// Checks the caller's roles and records the call.
    async fn admit(&self, principal: &Principal, call: &Call) -> Result<(), Status> {
        let allowed = require(&self.policy, principal, Privilege::ReadAudit);
        recorded(&self.audit, principal, call, allowed).await
    }
}

fn filter(f: Option<pb::EventFilter>) -> Filter {
    let f = f.unwrap_or_default();
    let some = |s: String| (!s.is_empty()).then_some(s);
    Filter {
        from_ms: f.from_unix_ms,
        to_ms: f.to_unix_ms,
        subject: some(f.subject),
        role: some(f.role),
        record_id: some(f.record_id),
        collection: some(f.collection),
        field: some(f.field),
        purpose: some(f.purpose),
        outcome: some(f.outcome),
        method: some(f.method),
        severity: some(f.severity),
        alerts_only: f.alerts_only,
    }
}

fn to_pb(e: &Event) -> pb::AuditEvent {
    pb::AuditEvent {
        seq: e.seq,
        time_unix_ms: e.time_ms,
        request_id: e.request_id.clone(),
        subject: e.subject.clone(),
        roles: e.roles.clone(),
        method: e.method.clone(),
        collection: e.collection.clone(),
        record_id: e.record_id.clone(),
        fields: e
            .fields
            .iter()
            .map(|f| pb::FieldOutcome {
                field: f.field.clone(),
                outcome: f.outcome.clone(),
            })
            .collect(),
        purpose: e.purpose.clone(),
        policy_version: e.policy_version,
        result: e.result.clone(),
        detail: e.detail.clone(),
        certificate: e.certificate.clone(),
        severity: e.severity.clone(),
    }
}

fn report_to_pb(r: audit::Report) -> pb::ReportResponse {
    pb::ReportResponse {
        subjects: r
            .subjects
            .into_iter()
            .map(|s| pb::SubjectReport {
                subject: s.subject,
                records: s.records,
                calls: s.calls,
                fields: s
                    .fields
                    .into_iter()
                    .map(|f| pb::FieldDisclosure {
                        field: f.field,
                        outcome: f.outcome,
                        records: f.records,
                    })
                    .collect(),
                purposes: s.purposes,
                first_unix_ms: s.first_ms,
                last_unix_ms: s.last_ms,
            })
            .collect(),
        events_matched: r.events_matched,
    }
}

/// A failure to read the log: the detail (a storage error may name files) goes to the log under
/// a fresh request id, through the one mapping; the client sees the id.
fn unavailable(e: audit::AuditError) -> Status {
    super::status::to_status(e.into(), &Call::new("Audit").request_id)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    type FollowEventsStream = EventStream;
    type ExportEventsStream = ChunkStream;

    async fn query_events(
        &self,
        request: Request<pb::QueryEventsRequest>,
    ) -> Result<Response<pb::QueryEventsResponse>, Status> {
        let by = principal(&request)?;
        self.admit(&by, &Call::new("Audit/QueryEvents")).await?;
        let req = request.into_inner();
        let limit = match req.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let (events, next) = query(&self.audit, filter(req.filter), req.after_seq, limit).await?;
        Ok(Response::new(pb::QueryEventsResponse {
            events: events.iter().map(to_pb).collect(),
            next_after_seq: next.unwrap_or(0),
        }))
    }

    async fn follow_events(
        &self,
        request: Request<pb::FollowEventsRequest>,
    ) -> Result<Response<Self::FollowEventsStream>, Status> {
        let by = principal(&request)?;
        let token = credential(&request)?;
        // Subscribe before recording the call: the stream starts with this call's own event.
        let mut live = self.audit.subscribe();
        self.admit(&by, &Call::new("Audit/FollowEvents")).await?;
        let req = request.into_inner();
        let filter = filter(req.filter);
        let audit = Arc::clone(&self.audit);
        let mut stopping = self.stopping.clone();
        // Events up to here come from the store, later ones from the live feed.
        let mut seen = self.audit.last_seq().map_err(unavailable)?;
        let stream = async_stream(token, move |tx| async move {
            if let Some(after) = req.after_seq {
                let Some(sent) = replay(&audit, &filter, after, &tx).await else {
                    return;
                };
                seen = seen.max(sent);
            }
            loop {
                let next = tokio::select! {
                    next = live.recv() => next,
                    _ = stopping.wait_for(|s| *s) => return,
                    () = tx.closed() => return,
                };
                match next {
                    Ok(event) if event.seq > seen => {
                        seen = event.seq;
                        if filter.matches(&event) && tx.send(Ok(to_pb(&event))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the live feed: catch up from the store, in order.
                        let Some(sent) = replay(&audit, &filter, seen, &tx).await else {
                            return;
                        };
                        seen = seen.max(sent);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn verify_log(
        &self,
        request: Request<pb::VerifyLogRequest>,
    ) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let by = principal(&request)?;
        self.admit(&by, &Call::new("Audit/VerifyLog")).await?;
        let req = request.into_inner();
        let audit = Arc::clone(&self.audit);
        let report = tokio::task::spawn_blocking(move || audit.verify(req.from_seq, req.to_seq))
            .await
            .map_err(|e| Status::internal(format!("verification task failed: {e}")))?
            .map_err(unavailable)?;
        let (problem_seq, problem) = report.problem.clone().unwrap_or_default();
        Ok(Response::new(pb::VerifyLogResponse {
            ok: report.ok(),
            from_seq: report.from,
            to_seq: report.to,
            checked: report.checked,
            anchor_seq: report.anchor,
            problem_seq,
            problem,
        }))
    }

    async fn get_head(
        &self,
        request: Request<pb::GetHeadRequest>,
    ) -> Result<Response<pb::SignedHead>, Status> {
        let by = principal(&request)?;
        self.admit(&by, &Call::new("Audit/GetHead")).await?;
        // Read after the call's own event: the head covers it.
        let audit = Arc::clone(&self.audit);
        let head = blocking(move || audit.head()).await?;
        Ok(Response::new(head.map_or_else(
            pb::SignedHead::default,
            |h| pb::SignedHead {
                seq: h.seq,
                hash: h.head,
                time_unix_ms: h.time_ms,
                signature: h.signature,
            },
        )))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let by = principal(&request)?;
        self.admit(&by, &Call::new("Audit/Report")).await?;
        let pb::ReportRequest {
            from_unix_ms,
            to_unix_ms,
            subject,
            field,
        } = request.into_inner();
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = Filter {
            from_ms: from_unix_ms,
            to_ms: to_unix_ms,
            subject: some(subject),
            field: some(field),
            ..Filter::default()
        };
        let audit = Arc::clone(&self.audit);
        let report = blocking(move || audit.report(&filter)).await?;
        Ok(Response::new(report_to_pb(report)))
    }

    async fn export_events(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Result<Response<Self::ExportEventsStream>, Status> {
        let by = principal(&request)?;
        let token = credential(&request)?;
        self.admit(&by, &Call::new("Audit/ExportEvents")).await?;
        let filter = filter(request.into_inner().filter);
        let audit = Arc::clone(&self.audit);
        let stream = async_stream(token, move |tx| async move {
            // The export runs to the signed head as it is now (this call's own event included).
            let mut export = {
                let audit = Arc::clone(&audit);
                match blocking(move || audit.begin_export(filter)).await {
                    Ok(export) => export,
                    Err(status) => return tx.send(Err(status)).await.unwrap_or(()),
                }
            };
            loop {
                let audit = Arc::clone(&audit);
                let next = blocking(move || {
                    let chunk = audit.export_chunk(&mut export)?;
                    Ok((chunk, export))
                })
                .await;
                let jsonl = match next {
                    Ok((Some(jsonl), rest)) => {
                        export = rest;
                        jsonl
                    }
                    Ok((None, _)) => return,
                    Err(status) => return tx.send(Err(status)).await.unwrap_or(()),
                };
                if !jsonl.is_empty() && tx.send(Ok(pb::ExportChunk { jsonl })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// Runs a read of the log on a blocking thread (it may read many events from disk).
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, audit::AuditError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "an audit read task failed");
            Status::internal("reading the audit log failed")
        })?
        .map_err(unavailable)
}

type Sender<T> = tokio::sync::mpsc::Sender<Result<T, Status>>;

/// Sends the stored events after `after` that pass `filter`, in order; returns the last
/// sequence number sent (or `after`), or `None` once the receiver is gone or the store fails.
async fn replay(
    audit: &Arc<Audit>,
    filter: &Filter,
    mut after: u64,
    tx: &Sender<pb::AuditEvent>,
) -> Option<u64> {
    let mut last = after;
    loop {
        let (events, next) = match query(audit, filter.clone(), after, 500).await {
            Ok(page) => page,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return None;
            }
        };
        for e in &events {
            last = e.seq;
            tx.send(Ok(to_pb(e))).await.ok()?;
        }
        match next {
            Some(n) => after = n,
            None => return Some(last),
        }
    }
}

/// One page of a query, scanned on a blocking thread: a scan may read many events from disk,
/// and must not hold up the async workers that serve every other call.
async fn query(
    audit: &Arc<Audit>,
    filter: Filter,
    after: u64,
    limit: usize,
) -> Result<(Vec<Event>, Option<u64>), Status> {
    let audit = Arc::clone(audit);
    tokio::task::spawn_blocking(move || audit.query(&filter, after, limit))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "an audit query task failed");
            Status::internal("the audit query failed")
        })?
        .map_err(unavailable)
}

/// A stream fed by a task: the task gets the sending half of a small channel. The stream ends
/// as soon as the caller's token is revoked or expires: with UNAUTHENTICATED, or (if the client has let
/// the channel fill) right after the events already queued.
fn async_stream<T, F, Fut>(
    token: Credential,
    f: F,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
where
    T: Send + 'static,
    F: FnOnce(Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let feed = f(tx.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = feed => {}
            () = token.revoked() => {
                let why = match token.check() {
                    Err(Rejection::Expired) => "the caller's token has expired",
                    Err(Rejection::Unknown) | Ok(()) => "the caller's token was revoked",
                };
                let _ = tx.try_send(Err(Status::unauthenticated(why)));
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_detail_never_reaches_the_client() {
        let detail =
            "storage I/O failed: IO error: /srv/strongroom-data/db/000042.sst: No space left";
        let status = unavailable(audit::AuditError::new(detail.to_owned()));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains(".sst"), "{}", status.message());
        assert!(!status.message().contains("/srv"), "{}", status.message());
        assert!(
            status.message().contains("request id"),
            "{}",
            status.message()
        );
    }
}
