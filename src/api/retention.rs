//! The `Retention` service: plan (a dry run) and run a retention sweep (`retention manage`).
//! Each call is an audit event: a plan its call's event, a run its sweep's summary event (and
//! one event per record it shreds from).

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, retention_server::Retention},
    status::{Known, audited, recorded},
};
use crate::{
    audit::Call,
    domain::parse_duration,
    vault::{
        Error, Vault,
        retention::{PLAN_LIMIT, Plan, SweepReport},
    },
};

/// The longest horizon of a plan: a hundred years, the longest rule.
const MAX_WITHIN: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// The `Retention` gRPC service.
#[derive(Debug, Clone)]
pub struct RetentionApi {
    vault: Arc<Vault>,
}

impl RetentionApi {
    /// The service over a vault.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

fn plan_to_pb(plan: Plan) -> pb::PlanRetentionResponse {
    let Plan {
        now_ms,
        examined,
        due,
        items,
        truncated,
    } = plan;
    pb::PlanRetentionResponse {
        items: items
            .into_iter()
            .map(|i| pb::RetentionItem {
                id: i.id.to_string(),
                collection: i.collection,
                field: i.field.unwrap_or_default(),
                rule: i.rule,
                due_unix_ms: i.due_ms,
                held: i.held,
            })
            .collect(),
        truncated,
        due,
        examined,
        now_unix_ms: now_ms,
    }
}

fn report_to_pb(r: SweepReport) -> pb::RunRetentionResponse {
    let SweepReport {
        examined,
        shredded_records,
        shredded_fields,
        held,
        first_seen,
        failed,
        finished,
    } = r;
    pb::RunRetentionResponse {
        examined,
        shredded_records,
        shredded_fields,
        held,
        first_seen,
        failed,
        finished,
    }
}

#[tonic::async_trait]
impl Retention for RetentionApi {
    async fn plan_retention(
        &self,
        request: Request<pb::PlanRetentionRequest>,
    ) -> Result<Response<pb::PlanRetentionResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Retention/PlanRetention");
        let pb::PlanRetentionRequest { within, limit } = request.into_inner();
        let result = async {
            let within = if within.trim().is_empty() {
                Duration::ZERO
            } else {
                parse_duration(&within, "within", MAX_WITHIN)?
            };
            let limit = match usize::try_from(limit) {
                Ok(0) | Err(_) => PLAN_LIMIT,
                Ok(n) => n.min(PLAN_LIMIT),
            };
            // A plan reads every record header: off the async workers.
            let (vault, by) = (Arc::clone(&self.vault), caller.clone());
            tokio::task::spawn_blocking(move || vault.plan_retention(&by, within, limit))
                .await
                .map_err(|e| Error::Internal(format!("retention plan task failed: {e}")))?
        }
        .await;
        let plan = recorded(self.vault.audit(), &caller, &call, result).await?;
        Ok(Response::new(plan_to_pb(plan)))
    }

    async fn run_retention(
        &self,
        request: Request<pb::RunRetentionRequest>,
    ) -> Result<Response<pb::RunRetentionResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Retention/RunRetention");
        let pb::RunRetentionRequest { max_records } = request.into_inner();
        let max = (max_records > 0).then_some(max_records);
        // The sweep runs to its end (or its bound) even if the caller goes away: it shreds.
        let (vault, by, run) = (Arc::clone(&self.vault), caller.clone(), call.clone());
        let result =
            super::to_completion(async move { vault.run_retention(&by, &run, max).await }).await;
        let report = audited(self.vault.audit(), &caller, &call, Known::default(), result).await?;
        Ok(Response::new(report_to_pb(report)))
    }
}
