//! The `retention` workload: a retention sweep over every record with a tenth of them expired,
//! and what it costs reads. The vault the bench starts gets one more collection, `leads`, with
//! the customers' fields and a rule that keeps a lead `KEEP` after its creation; after the
//! customers are preloaded, one lead is created for every nine of them, so that once `KEEP` has
//! passed a tenth of the records are due. Then, in that one vault: `get-masked` with no sweep,
//! then `get-masked` for exactly as long as a requested sweep (`RunRetention`) runs. The sweep's
//! time is the call's, by the bench's clock; its counts are the vault's answer. Every expired
//! lead goes through the ordinary shred path (data key destroyed, ciphertexts deleted, purge
//! queued, signed receipt, audit event); the purges complete after the sweep, off the figure.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Row,
    background::{Compared, Reads},
    workloads::{Clients, status},
    zipf::Picker,
};
use crate::api::pb;

/// The collection whose records expire.
pub(super) const COLLECTION: &str = "leads";

/// How long a lead is kept after its creation.
const KEEP: Duration = Duration::from_secs(20);

/// Leads per customer: one for nine, a tenth of all records.
pub(super) const LEADS_PER_CUSTOMER: f64 = 1.0 / 9.0;

/// The vault's config lines the workload needs: a requested sweep over a million records runs
/// longer than the default request timeout.
pub(super) const CONFIG: &str = "request_timeout_secs = 3600\n";

/// Declares `COLLECTION` in the bench's copy of the policies under `policies`: the customers'
/// fields, the rule that expires a lead `KEEP` after its creation, and the admin's right to
/// create leads.
///
/// # Errors
/// A message if the copied files cannot be appended to.
pub(super) fn declare(policies: &Path) -> Result<(), String> {
    let schema = format!(
        "\n# bench: records that expire {secs} seconds after their creation\n\
         [collections.{COLLECTION}]\n\
         fields = [\n\
         \x20 {{ name = \"name\", type = \"name\" }},\n\
         \x20 {{ name = \"email\", type = \"email\", indexed = true }},\n\
         \x20 {{ name = \"phone\", type = \"phone\", indexed = true }},\n\
         \x20 {{ name = \"address\", type = \"address\" }},\n\
         \x20 {{ name = \"date_of_birth\", type = \"date\", sensitive = true }},\n\
         \x20 {{ name = \"ssn\", type = \"ssn\", sensitive = true, indexed = true }},\n\
         \x20 {{ name = \"card_number\", type = \"card_number\", sensitive = true }},\n\
         \x20 {{ name = \"notes\", type = \"string\" }},\n\
         ]\n\
         [collections.{COLLECTION}.retention]\n\
         record = {{ keep = \"{secs} seconds\", after = \"created\" }}\n",
        secs = KEEP.as_secs()
    );
    let policy = format!(
        "\n# bench: the admin creates leads\np, role:admin, {COLLECTION}.*, write, *, allow\n"
    );
    for (name, text) in [("schema.toml", schema), ("policy.csv", policy)] {
        let path = policies.join(name);
        let mut current =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {name}: {e}"))?;
        current.push_str(&text);
        std::fs::write(&path, current).map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    Ok(())
}

/// What the workload measured.
#[derive(Debug, Clone)]
pub(super) struct Figures {
    /// The sweep's answer.
    pub(super) sweep: pb::RunRetentionResponse,
    /// The sweep's time, from the request to the answer.
    pub(super) sweep_time: Duration,
    /// get-masked with no sweep, and while it ran.
    pub(super) reads: Compared,
}

impl Figures {
    /// Records shredded per second of the sweep.
    pub(super) fn shreds_per_second(&self) -> f64 {
        self.sweep.shredded_records as f64 / self.sweep_time.as_secs_f64().max(1e-9)
    }

    /// The report's rows.
    pub(super) fn rows(&self) -> Vec<Row> {
        self.reads
            .rows("get-masked, no sweep", "get-masked, sweeping")
    }
}

/// Runs the workload once the leads created by `leads_loaded` are due; `cpu` reads the
/// server's CPU ticks (if the bench started it).
///
/// # Errors
/// A message if the sweep fails or leaves records unswept.
pub(super) async fn run(
    clients: &Clients,
    ids: &Arc<Vec<String>>,
    picker: &Arc<Picker>,
    in_flight: usize,
    duration: Duration,
    leads_loaded: Instant,
    cpu: impl Fn() -> Option<u64>,
) -> Result<Figures, String> {
    let mut admin = clients
        .admin
        .first()
        .cloned()
        .ok_or("no admin connection")?;
    let reads = Reads {
        clients,
        ids,
        picker,
        in_flight,
        cpu,
    };
    let base = reads.alone(duration).await?;
    // Every lead is due a second after the last one's `KEEP` has passed.
    let due = leads_loaded + KEEP + Duration::from_secs(1);
    tokio::time::sleep_until(due.into()).await;
    let (during_stats, during_cpu, (answer, sweep_time)) = reads
        .during("retention sweep", |done| async move {
            let started = Instant::now();
            let answer = admin
                .retention
                .run_retention(pb::RunRetentionRequest { max_records: 0 })
                .await;
            let took = started.elapsed();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            answer
                .map(|a| (a.into_inner(), took))
                .map_err(|s| format!("retention sweep: {}", status(&s)))
        })
        .await?;
    if !answer.finished || answer.failed > 0 {
        return Err(format!(
            "retention sweep: finished {}, {} records failed",
            answer.finished, answer.failed
        ));
    }
    Ok(Figures {
        sweep: answer,
        sweep_time,
        reads: Compared {
            base,
            during: (during_stats, during_cpu),
        },
    })
}
