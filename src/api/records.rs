//! The `Records` service: parses requests, calls the vault, shapes responses.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    convert::{field_inputs, field_result},
    pb::{self, records_server::Records},
};
use crate::{domain::RecordId, vault::Vault};

/// The `Records` gRPC service.
#[derive(Debug, Clone)]
pub struct RecordsApi {
    vault: Arc<Vault>,
}

impl RecordsApi {
    /// The service over a vault.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

#[tonic::async_trait]
impl Records for RecordsApi {
    async fn create_record(
        &self,
        request: Request<pb::CreateRecordRequest>,
    ) -> Result<Response<pb::CreateRecordResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.into_inner();
        let fields = field_inputs(&req.fields, "fields");
        let (id, version) = self
            .vault
            .create(&principal, &req.collection, &fields)
            .await?;
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
        let req = request.into_inner();
        let id = RecordId::parse(&req.id, "id")?;
        let (_, purpose) = self.vault.schema().purpose(&req.purpose, "purpose")?;
        let view = self.vault.get(&principal, &id, &req.fields, &purpose)?;
        let roles = principal.roles_text();
        let collection = view.collection.clone();
        let fields = view
            .fields
            .into_iter()
            .map(|f| field_result(f, &collection, &roles, purpose.as_str()))
            .collect();
        Ok(Response::new(pb::GetRecordResponse {
            id: view.id.to_string(),
            collection: view.collection,
            version: view.version,
            fields,
            policy_version: view.policy_version,
        }))
    }

    async fn update_record(
        &self,
        request: Request<pb::UpdateRecordRequest>,
    ) -> Result<Response<pb::UpdateRecordResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.into_inner();
        let id = RecordId::parse(&req.id, "id")?;
        let set = field_inputs(&req.set, "set");
        let version = self
            .vault
            .update(&principal, &id, &set, &req.clear, req.expected_version)
            .await?;
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
        let id = RecordId::parse(&request.get_ref().id, "id")?;
        let receipt = self.vault.shred(&principal, &id).await?;
        Ok(Response::new(pb::DeleteRecordResponse {
            receipt: Some(receipt.into()),
        }))
    }
}
