//! The `Policies` service: policy administration for security admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, policies_server::Policies},
};
use crate::{
    governance::{Governance, PolicyVersion},
    policy::DecisionChange,
};

/// The `Policies` gRPC service.
#[derive(Debug, Clone)]
pub struct PoliciesApi {
    governance: Arc<Governance>,
}

impl PoliciesApi {
    /// The service over the governance use cases.
    pub fn new(governance: Arc<Governance>) -> Self {
        Self { governance }
    }
}

fn info(v: &PolicyVersion) -> pb::PolicyVersionInfo {
    pb::PolicyVersionInfo {
        version: v.version,
        applied_by: v.applied_by.clone(),
        applied_at_unix_ms: v.applied_at_ms,
        comment: v.comment.clone(),
        from_version: v.from_version,
        rule_count: v.rule_count,
        decisions_changed: v.decisions_changed,
    }
}

fn changes(changes: Vec<DecisionChange>) -> Vec<pb::DecisionChange> {
    changes
        .into_iter()
        .map(|c| pb::DecisionChange {
            principal: c.principal,
            object: c.object,
            action: c.action.as_str().to_owned(),
            purpose: c.purpose,
            before: c.before.to_owned(),
            after: c.after.to_owned(),
        })
        .collect()
}

#[tonic::async_trait]
impl Policies for PoliciesApi {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let by = principal(&request)?;
        let v = self.governance.show(&by, request.get_ref().version)?;
        Ok(Response::new(pb::PolicyVersion {
            info: Some(info(&v)),
            text: v.text,
        }))
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let by = principal(&request)?;
        let req = request.into_inner();
        let (v, c) = self
            .governance
            .apply(&by, &req.text, &req.comment, req.expected_version)
            .await?;
        Ok(Response::new(pb::ApplyPolicyResponse {
            version: Some(info(&v)),
            changes: changes(c),
        }))
    }

    async fn list_policy_versions(
        &self,
        request: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        let by = principal(&request)?;
        let versions = self.governance.history(&by)?.iter().map(info).collect();
        Ok(Response::new(pb::ListPolicyVersionsResponse { versions }))
    }

    async fn diff_policy(
        &self,
        request: Request<pb::DiffPolicyRequest>,
    ) -> Result<Response<pb::DiffPolicyResponse>, Status> {
        let by = principal(&request)?;
        let req = request.into_inner();
        let (removed, added, c) = self
            .governance
            .diff(&by, req.from_version, req.to_version)
            .await?;
        Ok(Response::new(pb::DiffPolicyResponse {
            removed_rules: removed,
            added_rules: added,
            changes: changes(c),
        }))
    }

    async fn rollback_policy(
        &self,
        request: Request<pb::RollbackPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let by = principal(&request)?;
        let req = request.into_inner();
        let (v, c) = self
            .governance
            .rollback(&by, req.to_version, &req.comment, req.expected_version)
            .await?;
        Ok(Response::new(pb::ApplyPolicyResponse {
            version: Some(info(&v)),
            changes: changes(c),
        }))
    }

    async fn dry_run_policy(
        &self,
        request: Request<pb::DryRunPolicyRequest>,
    ) -> Result<Response<pb::DryRunPolicyResponse>, Status> {
        let by = principal(&request)?;
        let (against, c) = self
            .governance
            .dry_run(&by, &request.get_ref().text)
            .await?;
        Ok(Response::new(pb::DryRunPolicyResponse {
            against_version: against,
            changes: changes(c),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let by = principal(&request)?;
        let req = request.into_inner();
        let e = self
            .governance
            .explain(&by, &req.principal, &req.action, &req.object, &req.purpose)
            .await?;
        Ok(Response::new(pb::ExplainResponse {
            outcome: e.outcome.to_owned(),
            matched: e
                .matched
                .into_iter()
                .map(|m| pb::MatchedRule {
                    line: u32::try_from(m.line).unwrap_or(u32::MAX),
                    rule: m.rule,
                    via: m.via,
                    allow: m.allow,
                })
                .collect(),
            summary: e.summary,
            policy_version: e.policy_version,
        }))
    }
}
