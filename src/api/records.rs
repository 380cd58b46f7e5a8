//! The `Records` service: parses requests, calls the vault, shapes responses. Every call is
//! audited: by the vault's events on success (a find also records each record it returns, an
//! export each record it sends, an erasure each shred), by a failure event otherwise.

use std::{pin::Pin, sync::Arc};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{
    auth::{credential, principal},
    convert::{check_batch, check_count, exported_field, field_inputs, field_result},
    pb::{self, records_server::Records},
    status::{Known, audited, failure, record_failures},
};
use crate::{
    audit::Call,
    domain::{InvalidInput, Principal, RecordId},
    vault::{
        BatchOptions, Error, ExportEnd, FindQuery, NewRecord, RecordView, Vault, repeated, subject,
    },
};

/// Records read per batch of an export: one audit commit (one fsync) per batch.
const EXPORT_BATCH: usize = 256;

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportedRecord, Status>> + Send>>;

/// The `Records` gRPC service.
#[derive(Debug, Clone)]
pub struct RecordsApi {
    vault: Arc<Vault>,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl RecordsApi {
    /// The service over a vault.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self {
            vault,
            stopping: None,
        }
    }

    /// Exports end when `stopping` turns true, so that one never holds up shutdown.
    #[must_use]
    pub fn with_stopping(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }
}

/// Whose records a subject request names.
enum SubjectRef {
    Id(String),
    Ids(Vec<String>),
    Lookup(pb::Lookup),
}

impl From<pb::export_subject_request::Subject> for SubjectRef {
    fn from(s: pb::export_subject_request::Subject) -> Self {
        match s {
            pb::export_subject_request::Subject::Lookup(l) => Self::Lookup(l),
            pb::export_subject_request::Subject::RecordId(id) => Self::Id(id),
            pb::export_subject_request::Subject::RecordIds(ids) => Self::Ids(ids.ids),
        }
    }
}

impl From<pb::erase_subject_request::Subject> for SubjectRef {
    fn from(s: pb::erase_subject_request::Subject) -> Self {
        match s {
            pb::erase_subject_request::Subject::Lookup(l) => Self::Lookup(l),
            pb::erase_subject_request::Subject::RecordId(id) => Self::Id(id),
            pb::erase_subject_request::Subject::RecordIds(ids) => Self::Ids(ids.ids),
        }
    }
}

impl RecordsApi {
    /// The record ids a subject request names: the ids given, or every record a lookup finds
    /// through the blind index (the caller needs `find` on the field for `subject_access`).
    async fn resolve_subject(
        &self,
        principal: &Principal,
        subject: Option<SubjectRef>,
        known: &mut Known,
    ) -> Result<Vec<RecordId>, Error> {
        match subject {
            Some(SubjectRef::Id(id)) => {
                let id = RecordId::parse(&id, "record_id")?;
                known.record_id = id.to_string();
                Ok(vec![id])
            }
            Some(SubjectRef::Ids(ids)) => {
                check_count(ids.len(), self.vault.limits().max_fields, "record_ids")?;
                ids.iter()
                    .enumerate()
                    .map(|(i, id)| Ok(RecordId::parse(id, &format!("record_ids[{i}]"))?))
                    .collect()
            }
            Some(SubjectRef::Lookup(lookup)) => {
                let collection = self
                    .vault
                    .schema()
                    .collection(&lookup.collection, "lookup.collection")?;
                known.collection = collection.name().as_str().to_owned();
                let (_, purpose) = self
                    .vault
                    .schema()
                    .purpose(subject::SUBJECT_ACCESS, "purpose")?;
                let ids = self.vault.lookup_ids(
                    principal,
                    &lookup.collection,
                    &lookup.field,
                    &lookup.value,
                    &purpose,
                )?;
                if ids.is_empty() {
                    // Nothing of the subject is held: the same answer as an unknown id.
                    return Err(Error::NotFound);
                }
                Ok(ids)
            }
            None => {
                Err(InvalidInput::new("subject", "give a record_id, record_ids or a lookup").into())
            }
        }
    }
}

#[tonic::async_trait]
impl Records for RecordsApi {
    type ExportRecordsStream = ExportStream;

    async fn create_record(
        &self,
        request: Request<pb::CreateRecordRequest>,
    ) -> Result<Response<pb::CreateRecordResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/CreateRecord");
        let req = request.into_inner();
        let mut known = Known::default();
        if self
            .vault
            .schema()
            .collection(&req.collection, "collection")
            .is_ok()
        {
            known.collection.clone_from(&req.collection);
        }
        let max = self.vault.limits().max_fields;
        let result = match check_count(req.fields.len(), max, "fields") {
            Ok(()) => {
                let fields = field_inputs(&req.fields, "fields");
                self.vault
                    .create(&principal, &call, &req.collection, &fields, req.honeytoken)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        let (id, version) = audited(self.vault.audit(), &principal, &call, known, result).await?;
        Ok(Response::new(pb::CreateRecordResponse {
            id: id.to_string(),
            version,
        }))
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/GetRecord");
        let req = request.into_inner();
        let mut known = Known::default();
        let result = async {
            check_count(req.fields.len(), self.vault.limits().max_fields, "fields")?;
            let id = RecordId::parse(&req.id, "id")?;
            known.record_id = id.to_string();
            let (_, purpose) = self.vault.schema().purpose(&req.purpose, "purpose")?;
            known.purpose = purpose.as_str().to_owned();
            let view = self
                .vault
                .get(&principal, &call, &id, &req.fields, &purpose)
                .await?;
            Ok((view, purpose))
        }
        .await;
        let (view, purpose) = audited(self.vault.audit(), &principal, &call, known, result).await?;
        Ok(Response::new(record_response(
            view,
            &principal.roles_text(),
            purpose.as_str(),
        )))
    }

    async fn find_records(
        &self,
        request: Request<pb::FindRecordsRequest>,
    ) -> Result<Response<pb::FindRecordsResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/FindRecords");
        let req = request.into_inner();
        let mut known = Known::default();
        let result = async {
            check_count(req.fields.len(), self.vault.limits().max_fields, "fields")?;
            let collection = self
                .vault
                .schema()
                .collection(&req.collection, "collection")?;
            known.collection = collection.name().as_str().to_owned();
            let (_, purpose) = self.vault.schema().purpose(&req.purpose, "purpose")?;
            known.purpose = purpose.as_str().to_owned();
            let query = FindQuery {
                collection: &req.collection,
                field: &req.field,
                value: &req.value,
                purpose: &purpose,
            };
            let found = self
                .vault
                .find(&principal, &call, &query, &req.fields)
                .await?;
            Ok((found, purpose))
        }
        .await;
        let (found, purpose) =
            audited(self.vault.audit(), &principal, &call, known, result).await?;
        let roles = principal.roles_text();
        Ok(Response::new(pb::FindRecordsResponse {
            records: found
                .records
                .into_iter()
                .map(|view| record_response(view, &roles, purpose.as_str()))
                .collect(),
            truncated: found.truncated,
        }))
    }

    async fn update_record(
        &self,
        request: Request<pb::UpdateRecordRequest>,
    ) -> Result<Response<pb::UpdateRecordResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/UpdateRecord");
        let req = request.into_inner();
        let mut known = Known::default();
        let result = async {
            let max = self.vault.limits().max_fields;
            check_count(req.set.len(), max, "set")?;
            check_count(req.clear.len(), max, "clear")?;
            check_count(req.set.len() + req.clear.len(), max, "set and clear")?;
            let set = field_inputs(&req.set, "set");
            let id = RecordId::parse(&req.id, "id")?;
            known.record_id = id.to_string();
            let version = self
                .vault
                .update(
                    &principal,
                    &call,
                    &id,
                    &set,
                    &req.clear,
                    req.expected_version,
                )
                .await?;
            Ok((id, version))
        }
        .await;
        let (id, version) = audited(self.vault.audit(), &principal, &call, known, result).await?;
        Ok(Response::new(pb::UpdateRecordResponse {
            id: id.to_string(),
            version,
        }))
    }

    async fn delete_record(
        &self,
        request: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/DeleteRecord");
        let mut known = Known::default();
        let result = async {
            let id = RecordId::parse(&request.get_ref().id, "id")?;
            known.record_id = id.to_string();
            self.vault
                .shred(&principal, &call, &id, request.get_ref().wait_for_purge)
                .await
        }
        .await;
        let receipt = audited(self.vault.audit(), &principal, &call, known, result).await?;
        Ok(Response::new(pb::DeleteRecordResponse {
            receipt: Some(receipt.into()),
        }))
    }

    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<pb::ExportSubjectResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/ExportSubject");
        let req = request.into_inner();
        let mut known = Known {
            purpose: subject::SUBJECT_ACCESS.to_owned(),
            ..Known::default()
        };
        let result = async {
            let ids = self
                .resolve_subject(&principal, req.subject.map(SubjectRef::from), &mut known)
                .await?;
            self.vault.export_subject(&principal, &call, &ids).await
        }
        .await;
        let export = audited(self.vault.audit(), &principal, &call, known, result).await?;
        Ok(Response::new(pb::ExportSubjectResponse {
            document: export.signed.document,
            signature: export.signed.signature,
            record_ids: export.ids.iter().map(RecordId::to_string).collect(),
        }))
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/EraseSubject");
        let req = request.into_inner();
        let mut known = Known::default();
        let result = async {
            let ids = self
                .resolve_subject(&principal, req.subject.map(SubjectRef::from), &mut known)
                .await?;
            self.vault
                .erase_subject(&principal, &call, &ids, req.wait_for_purge)
                .await
        }
        .await;
        let erasure = audited(self.vault.audit(), &principal, &call, known, result).await?;
        let mut not_erased = Vec::with_capacity(erasure.not_erased.len());
        for (id, e) in erasure.not_erased {
            let reason = subject::not_erased_reason(&e);
            // Each id not erased gets the event of a failed call, like a failed DeleteRecord.
            let known = Known {
                record_id: id.to_string(),
                ..Known::default()
            };
            let _refused =
                audited::<()>(self.vault.audit(), &principal, &call, known, Err(e)).await;
            not_erased.push(pb::NotErased {
                id: id.to_string(),
                reason,
            });
        }
        let (signed_document, signature) = erasure
            .signed
            .map(|s| (s.document, s.signature))
            .unwrap_or_default();
        Ok(Response::new(pb::EraseSubjectResponse {
            erased: erasure.erased.into_iter().map(Into::into).collect(),
            not_erased,
            signed_document,
            signature,
        }))
    }

    async fn batch_get_records(
        &self,
        request: Request<pb::BatchGetRecordsRequest>,
    ) -> Result<Response<pb::BatchGetRecordsResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/BatchGetRecords");
        let req = request.into_inner();
        let mut known = Known::default();
        let result = async {
            let limits = self.vault.limits();
            check_batch(req.ids.len(), limits.max_batch, "ids")?;
            check_count(req.fields.len(), limits.max_fields, "fields")?;
            self.vault
                .admit_items(&principal, &call, req.ids.len())
                .await?;
            let (_, purpose) = self.vault.schema().purpose(&req.purpose, "purpose")?;
            known.purpose = purpose.as_str().to_owned();
            // An id that does not parse fails alone, like an id the vault cannot read.
            let parsed: Vec<Result<RecordId, InvalidInput>> = req
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| RecordId::parse(id, &format!("ids[{i}]")))
                .collect();
            // Named by its place in the request, ids that do not parse counted.
            if let Some(twice) = repeated(parsed.iter().map(|p| p.as_ref().ok().copied())) {
                return Err(
                    InvalidInput::new(format!("ids[{twice}]"), "given more than once").into(),
                );
            }
            let ids: Vec<RecordId> = parsed.iter().filter_map(|p| p.clone().ok()).collect();
            let read = self
                .vault
                .get_many(&principal, &call, &ids, &req.fields, &purpose)
                .await?;
            Ok((parsed, read, purpose))
        }
        .await;
        let (parsed, read, purpose) =
            audited(self.vault.audit(), &principal, &call, known.clone(), result).await?;
        let roles = principal.roles_text();
        let mut read = read.into_iter();
        let mut failures = Vec::new();
        let mut results = Vec::with_capacity(parsed.len());
        for p in parsed {
            let (id, outcome) = match p {
                Ok(id) => (id.to_string(), read.next().unwrap_or(Err(Error::NotFound))),
                Err(e) => (String::new(), Err(e.into())),
            };
            let result = match outcome {
                Ok(view) => pb::batch_get_result::Result::Record(record_response(
                    view,
                    &roles,
                    purpose.as_str(),
                )),
                Err(e) => {
                    let known = Known {
                        record_id: id,
                        ..known.clone()
                    };
                    let (status, event) = failure(&principal, &call, known, e);
                    failures.push(event);
                    pb::batch_get_result::Result::Error(item_error(&status))
                }
            };
            results.push(pb::BatchGetResult {
                result: Some(result),
            });
        }
        record_failures(self.vault.audit(), &call, failures).await;
        Ok(Response::new(pb::BatchGetRecordsResponse { results }))
    }

    async fn batch_create_records(
        &self,
        request: Request<pb::BatchCreateRecordsRequest>,
    ) -> Result<Response<pb::BatchCreateRecordsResponse>, Status> {
        let principal = principal(&request)?;
        let call = Call::new("Records/BatchCreateRecords");
        let req = request.into_inner();
        let limits = self.vault.limits();
        let result = async {
            check_batch(req.records.len(), limits.max_batch, "records")?;
            self.vault
                .admit_items(&principal, &call, req.records.len())
                .await?;
            for (i, r) in req.records.iter().enumerate() {
                check_count(
                    r.fields.len(),
                    limits.max_fields,
                    &format!("records[{i}].fields"),
                )?;
            }
            let inputs: Vec<_> = req
                .records
                .iter()
                .map(|r| field_inputs(&r.fields, "fields"))
                .collect();
            let records: Vec<NewRecord<'_>> = req
                .records
                .iter()
                .zip(&inputs)
                .map(|(r, fields)| NewRecord {
                    collection: &r.collection,
                    fields,
                    honeytoken: r.honeytoken,
                })
                .collect();
            let options = BatchOptions {
                idempotency_key: Some(req.idempotency_key.as_str()).filter(|k| !k.is_empty()),
                validate_only: req.validate_only,
            };
            self.vault
                .create_many(&principal, &call, &records, &options)
                .await
        }
        .await;
        let created = audited(
            self.vault.audit(),
            &principal,
            &call,
            Known::default(),
            result,
        )
        .await?;
        let mut failures = Vec::new();
        let mut results = Vec::with_capacity(created.results.len());
        for (i, (outcome, r)) in created.results.into_iter().zip(&req.records).enumerate() {
            let result = match outcome {
                Ok(id) => pb::batch_create_result::Result::Created(pb::CreateRecordResponse {
                    id: id.map(|id| id.to_string()).unwrap_or_default(),
                    version: if id.is_some() { 1 } else { 0 },
                }),
                Err(e) => {
                    // Errors name the record: `records[3].fields[1] (email)`.
                    let mut e = e;
                    if let Error::InvalidArgument(input) = &mut e {
                        input.field = format!("records[{i}].{}", input.field);
                    }
                    let mut known = Known::default();
                    if self.vault.schema().collection(&r.collection, "").is_ok() {
                        known.collection.clone_from(&r.collection);
                    }
                    let (status, event) = failure(&principal, &call, known, e);
                    if !created.replayed {
                        failures.push(event);
                    }
                    pb::batch_create_result::Result::Error(item_error(&status))
                }
            };
            results.push(pb::BatchCreateResult {
                result: Some(result),
            });
        }
        record_failures(self.vault.audit(), &call, failures).await;
        Ok(Response::new(pb::BatchCreateRecordsResponse {
            results,
            replayed: created.replayed,
        }))
    }

    async fn export_records(
        &self,
        request: Request<pb::ExportRecordsRequest>,
    ) -> Result<Response<Self::ExportRecordsStream>, Status> {
        let principal = principal(&request)?;
        let token = credential(&request)?;
        let call = Call::new("Records/ExportRecords");
        let req = request.into_inner();
        let mut known = Known::default();
        let begun = async {
            check_count(req.fields.len(), self.vault.limits().max_fields, "fields")?;
            let coll = self
                .vault
                .schema()
                .collection(&req.collection, "collection")?;
            known.collection = coll.name().as_str().to_owned();
            let (_, purpose) = self.vault.schema().purpose(&req.purpose, "purpose")?;
            known.purpose = purpose.as_str().to_owned();
            self.vault
                .begin_export(&principal, &req.collection, &req.fields, &purpose)
        }
        .await;
        let mut export =
            audited(self.vault.audit(), &principal, &call, known.clone(), begun).await?;
        let vault = Arc::clone(&self.vault);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Without a shutdown signal, one that never fires.
        let (_never, never) = tokio::sync::watch::channel(false);
        let mut stopping = self.stopping.clone().unwrap_or(never);
        tokio::spawn(async move {
            let _never = _never;
            let end = loop {
                if *stopping.borrow() {
                    let _ = tx.try_send(Err(Status::unavailable(
                        "the server is shutting down; the export stopped",
                    )));
                    break ExportEnd::ServerStopping;
                }
                // A token revoked (or expired) during a long export ends it between batches.
                if token.check().is_err() {
                    let _ = tx
                        .send(Err(Status::unauthenticated(
                            "the caller's token was revoked or has expired",
                        )))
                        .await;
                    break ExportEnd::TokenRevoked;
                }
                let batch = vault
                    .export_batch(&principal, &call, &mut export, EXPORT_BATCH)
                    .await;
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        let status = audited(
                            vault.audit(),
                            &principal,
                            &call,
                            known.clone(),
                            Err::<(), _>(e),
                        )
                        .await
                        .err()
                        .unwrap_or_else(|| Status::internal("the export failed"));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let mut gone = None;
                for (scanned, view) in batch.records {
                    let record = pb::ExportedRecord {
                        id: view.id.to_string(),
                        version: view.version,
                        fields: view.fields.into_iter().map(exported_field).collect(),
                        total: export.total(),
                        scanned,
                        policy_version: view.policy_version,
                    };
                    tokio::select! {
                        sent = tx.send(Ok(record)) => if sent.is_err() {
                            gone = Some(ExportEnd::ClientGone);
                        },
                        _ = stopping.wait_for(|s| *s) => {
                            let _ = tx.try_send(Err(Status::unavailable(
                                "the server is shutting down; the export stopped",
                            )));
                            gone = Some(ExportEnd::ServerStopping);
                        }
                    }
                    if gone.is_some() {
                        break;
                    }
                }
                if let Some(end) = gone {
                    break end;
                }
                if batch.done {
                    break ExportEnd::Completed;
                }
            };
            if let Err(e) = vault.finish_export(&principal, &call, &export, end).await {
                tracing::error!(request_id = %call.request_id, error = %e, "the summary event of an export was not recorded");
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One item's failure, for the wire: the status its single call would have failed with.
fn item_error(status: &Status) -> pb::ItemError {
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

/// A read's answer as `GetRecordResponse` (also each match of a find).
fn record_response(view: RecordView, roles: &str, purpose: &str) -> pb::GetRecordResponse {
    let collection = view.collection.clone();
    let fields = view
        .fields
        .into_iter()
        .map(|f| field_result(f, &collection, roles, purpose))
        .collect();
    pb::GetRecordResponse {
        id: view.id.to_string(),
        collection: view.collection,
        version: view.version,
        fields,
        policy_version: view.policy_version,
    }
}
