//! Reads against a background job of the vault (a key rotation, a retention sweep), in one
//! vault on the same records: get-masked with no job, then get-masked for exactly as long as
//! the job runs, each with the server's CPU per read.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize},
    },
    time::Duration,
};

use super::{
    Row,
    load::{Stats, drive, drive_until},
    workloads::{Clients, OpFuture, op},
    zipf::Picker,
};

/// How the reads are driven, and the server's CPU ticks (if the bench started it).
pub(super) struct Reads<'a, C> {
    pub(super) clients: &'a Clients,
    pub(super) ids: &'a Arc<Vec<String>>,
    pub(super) picker: &'a Arc<Picker>,
    pub(super) in_flight: usize,
    pub(super) cpu: C,
}

impl<C: Fn() -> Option<u64>> Reads<'_, C> {
    fn op(&self) -> Result<impl Fn(u64) -> OpFuture + Clone + Send + Sync + 'static, String> {
        op(
            "get-masked",
            self.clients,
            Arc::clone(self.ids),
            Arc::clone(self.picker),
            Arc::new((Vec::new(), AtomicUsize::new(0))),
        )
    }

    /// get-masked for `duration`, with no job: its stats and server CPU per read.
    pub(super) async fn alone(&self, duration: Duration) -> Result<(Stats, Option<f64>), String> {
        let before = (self.cpu)();
        let stats = drive(self.in_flight, duration, None, self.op()?).await;
        let cpu = super::cpu_us(before, (self.cpu)(), stats.requests);
        Ok((stats, cpu))
    }

    /// get-masked while `job` runs: `job` gets the flag to set when it has ended, and the reads
    /// stop then (an hour at most). The reads' stats, server CPU per read, and what `job`
    /// returned; `what` names the job in an error.
    pub(super) async fn during<T, F, Fut>(
        &self,
        what: &str,
        job: F,
    ) -> Result<(Stats, Option<f64>, T), String>
    where
        F: FnOnce(Arc<AtomicBool>) -> Fut,
        Fut: Future<Output = Result<T, String>> + Send + 'static,
        T: Send + 'static,
    {
        let done = Arc::new(AtomicBool::new(false));
        let before = (self.cpu)();
        let job = tokio::spawn(job(Arc::clone(&done)));
        let stats = drive_until(
            self.in_flight,
            Duration::from_secs(3600),
            None,
            Some(done),
            self.op()?,
        )
        .await;
        let cpu = super::cpu_us(before, (self.cpu)(), stats.requests);
        let out = job
            .await
            .map_err(|e| format!("{what} task failed: {e}"))??;
        Ok((stats, cpu, out))
    }
}

/// Reads with no job, and while the job ran: their stats and the server's CPU per read.
#[derive(Debug, Clone)]
pub(super) struct Compared {
    pub(super) base: (Stats, Option<f64>),
    pub(super) during: (Stats, Option<f64>),
}

impl Compared {
    /// Reads/s during the job over reads/s without.
    pub(super) fn ratio(&self) -> f64 {
        self.during.0.per_second() / self.base.0.per_second().max(1e-9)
    }

    /// The report's rows, named `base` and `during`.
    pub(super) fn rows(&self, base: &str, during: &str) -> Vec<Row> {
        [(base, &self.base), (during, &self.during)]
            .into_iter()
            .map(|(name, (stats, cpu))| Row {
                name: name.into(),
                stats: stats.clone(),
                server_cpu_us: *cpu,
            })
            .collect()
    }
}
