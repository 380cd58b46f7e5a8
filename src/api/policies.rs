//! The `Policies` service: policy administration for security admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, policies_server::Policies},
    status::{Known, audited, recorded},
};
use crate::{
    audit::Call,
    policy::DecisionChange,
    vault::governance::{Governance, Outcome, PolicyVersion, Proposal, Status as ProposalStatus},
};

/// The `Policies` gRPC service.
#[derive(Debug, Clone)]
pub struct PoliciesApi {
    governance: Arc<Governance>,
}

impl PoliciesApi {
    /// Audits a policy change's failure (its success is audited with its version) and shapes
    /// the response.
    async fn applied(
        &self,
        by: &crate::domain::Principal,
        call: &Call,
        result: Result<Outcome, crate::vault::Error>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let outcome = audited(self.governance.audit(), by, call, Known::default(), result).await?;
        Ok(Response::new(match outcome {
            Outcome::Applied(v, c) => pb::ApplyPolicyResponse {
                version: Some(info(&v)),
                changes: changes(c),
                pending: None,
            },
            Outcome::Pending(p, c) => pb::ApplyPolicyResponse {
                version: None,
                changes: changes(c),
                pending: Some(pending(p)),
            },
        }))
    }

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
        approved_by: v.approved_by.clone(),
    }
}

fn pending(p: Proposal) -> pb::PendingPolicy {
    let (status, decided_by) = match p.status {
        ProposalStatus::Approved { by, .. } => ("approved", by),
        ProposalStatus::Pending => ("pending", String::new()),
        ProposalStatus::Rejected { by, .. } => ("rejected", by),
    };
    pb::PendingPolicy {
        id: p.id,
        proposed_by: p.proposed_by,
        proposed_at_unix_ms: p.proposed_at_ms,
        comment: p.comment,
        against_version: p.against_version,
        reasons: p.reasons,
        decisions_changed: p.decisions_changed,
        status: status.to_owned(),
        decided_by,
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
        let call = Call::new("Policies/GetPolicy");
        let result = self.governance.show(&by, request.get_ref().version);
        let v = recorded(self.governance.audit(), &by, &call, result).await?;
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
        let call = Call::new("Policies/ApplyPolicy");
        let (governance, caller, change) = (Arc::clone(&self.governance), by.clone(), call.clone());
        let result = super::to_completion(async move {
            governance
                .apply(
                    &caller,
                    &change,
                    &req.text,
                    &req.comment,
                    req.expected_version,
                )
                .await
        })
        .await;
        self.applied(&by, &call, result).await
    }

    async fn approve_policy(
        &self,
        request: Request<pb::ApprovePolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let by = principal(&request)?;
        let pb::ApprovePolicyRequest { id } = request.into_inner();
        let call = Call::new("Policies/ApprovePolicy");
        let (governance, caller, change) = (Arc::clone(&self.governance), by.clone(), call.clone());
        let result =
            super::to_completion(async move { governance.approve(&caller, &change, id).await })
                .await;
        self.applied(&by, &call, result).await
    }

    async fn reject_policy(
        &self,
        request: Request<pb::RejectPolicyRequest>,
    ) -> Result<Response<pb::PendingPolicy>, Status> {
        let by = principal(&request)?;
        let pb::RejectPolicyRequest { id } = request.into_inner();
        let call = Call::new("Policies/RejectPolicy");
        let (governance, caller, change) = (Arc::clone(&self.governance), by.clone(), call.clone());
        let result =
            super::to_completion(async move { governance.reject(&caller, &change, id).await })
                .await;
        let p = audited(
            self.governance.audit(),
            &by,
            &call,
            Known::default(),
            result,
        )
        .await?;
        Ok(Response::new(pending(p)))
    }

    async fn list_pending_policies(
        &self,
        request: Request<pb::ListPendingPoliciesRequest>,
    ) -> Result<Response<pb::ListPendingPoliciesResponse>, Status> {
        let by = principal(&request)?;
        let call = Call::new("Policies/ListPendingPolicies");
        let result = self.governance.pending(&by);
        let list = recorded(self.governance.audit(), &by, &call, result).await?;
        Ok(Response::new(pb::ListPendingPoliciesResponse {
            pending: list.into_iter().map(pending).collect(),
        }))
    }

    async fn list_policy_versions(
        &self,
        request: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        let by = principal(&request)?;
        let call = Call::new("Policies/ListPolicyVersions");
        let result = self.governance.history(&by);
        let versions = recorded(self.governance.audit(), &by, &call, result)
            .await?
            .iter()
            .map(info)
            .collect();
        Ok(Response::new(pb::ListPolicyVersionsResponse { versions }))
    }

    async fn diff_policy(
        &self,
        request: Request<pb::DiffPolicyRequest>,
    ) -> Result<Response<pb::DiffPolicyResponse>, Status> {
        let by = principal(&request)?;
        let req = request.into_inner();
        let call = Call::new("Policies/DiffPolicy");
        let result = self
            .governance
            .diff(&by, req.from_version, req.to_version)
            .await;
        let (removed, added, c) = recorded(self.governance.audit(), &by, &call, result).await?;
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
        let call = Call::new("Policies/RollbackPolicy");
        let (governance, caller, change) = (Arc::clone(&self.governance), by.clone(), call.clone());
        let result = super::to_completion(async move {
            governance
                .rollback(
                    &caller,
                    &change,
                    req.to_version,
                    &req.comment,
                    req.expected_version,
                )
                .await
        })
        .await;
        self.applied(&by, &call, result).await
    }

    async fn dry_run_policy(
        &self,
        request: Request<pb::DryRunPolicyRequest>,
    ) -> Result<Response<pb::DryRunPolicyResponse>, Status> {
        let by = principal(&request)?;
        let call = Call::new("Policies/DryRunPolicy");
        let result = self.governance.dry_run(&by, &request.get_ref().text).await;
        let (against, c) = recorded(self.governance.audit(), &by, &call, result).await?;
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
        let call = Call::new("Policies/Explain");
        let result = self
            .governance
            .explain(&by, &req.principal, &req.action, &req.object, &req.purpose)
            .await;
        let e = recorded(self.governance.audit(), &by, &call, result).await?;
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
