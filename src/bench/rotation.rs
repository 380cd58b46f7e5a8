//! The `rotation` workload: how fast a key rotation rewraps the data keys, and what it costs
//! reads. In one vault, on the same records: a rotation with no load (the rewrap rate alone),
//! then `get-masked` without a rotation, then `get-masked` again for exactly as long as a second
//! rotation runs. The rewrap rate is the vault's own figure from the rotation's audit event
//! (keys rewrapped, milliseconds), so polling for the end adds no error to it. The vault's rate
//! limit (`rewrap_per_second`) applies: `--rewrap-per-second` sets it on the vault the bench
//! starts.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize},
    },
    time::{Duration, Instant},
};

use super::{
    Row,
    load::{Stats, drive, drive_until},
    workloads::{Clients, op, status},
    zipf::Picker,
};
use crate::{api::pb, client::Client};

/// One rotation, as the vault reports it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rewrap {
    /// Data keys rewrapped.
    pub(super) keys: u64,
    /// How long the rewrap took, by the vault's clock (ms).
    pub(super) server_ms: u64,
    /// From the request to the end seen by polling, by the bench's clock.
    pub(super) wall: Duration,
}

impl Rewrap {
    /// Keys per second, by the vault's clock.
    pub(super) fn per_second(&self) -> f64 {
        self.keys as f64 * 1000.0 / (self.server_ms.max(1) as f64)
    }
}

/// What the workload measured.
#[derive(Debug, Clone)]
pub(super) struct Figures {
    /// The rotation with no other load.
    pub(super) alone: Rewrap,
    /// The rotation that ran under the reads.
    pub(super) under_reads: Rewrap,
    /// Reads without a rotation.
    pub(super) base: Stats,
    /// Reads while the second rotation ran.
    pub(super) during: Stats,
}

impl Figures {
    /// Reads/s during the rotation over reads/s without.
    pub(super) fn ratio(&self) -> f64 {
        self.during.per_second() / self.base.per_second().max(1e-9)
    }

    /// The report's rows.
    pub(super) fn rows(&self, base_cpu: Option<f64>, during_cpu: Option<f64>) -> Vec<Row> {
        vec![
            Row {
                name: "get-masked, no rotation".into(),
                stats: self.base.clone(),
                server_cpu_us: base_cpu,
            },
            Row {
                name: "get-masked, rotating".into(),
                stats: self.during.clone(),
                server_cpu_us: during_cpu,
            },
        ]
    }
}

fn text(s: &tonic::Status) -> String {
    format!("key rotation: {}", status(s))
}

async fn rotating(admin: &mut Client) -> Result<bool, String> {
    Ok(admin
        .keys
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .map_err(|s| text(&s))?
        .into_inner()
        .rotating)
}

/// Starts a rotation and returns once it has ended; `done` is set then.
async fn rotate(mut admin: Client, done: Arc<AtomicBool>) -> Result<Rewrap, String> {
    if rotating(&mut admin).await? {
        return Err("a key rotation is already in progress in this vault".into());
    }
    let started = Instant::now();
    admin
        .keys
        .rotate_keys(pb::RotateKeysRequest {})
        .await
        .map_err(|s| text(&s))?;
    // Each status counts the key store's keys: poll gently.
    while rotating(&mut admin).await? {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (keys, server_ms) = last_rotation(&mut admin).await?;
    Ok(Rewrap {
        keys,
        server_ms,
        wall,
    })
}

/// Keys and milliseconds of the last completed rotation, from its audit event ("rotation to
/// epoch E completed: N data keys rewrapped in M ms").
async fn last_rotation(admin: &mut Client) -> Result<(u64, u64), String> {
    let mut after = 0;
    let mut last = None;
    loop {
        let page = admin
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: Some(pb::EventFilter {
                    method: "Keys/Rotate".into(),
                    ..pb::EventFilter::default()
                }),
                page_size: 1000,
                after_seq: after,
            })
            .await
            .map_err(|s| text(&s))?
            .into_inner();
        last = page.events.last().map(|e| e.detail.clone()).or(last);
        if page.next_after_seq == 0 {
            break;
        }
        after = page.next_after_seq;
    }
    let detail = last.ok_or("key rotation: no completed rotation in the audit log")?;
    parse_completion(&detail)
        .ok_or_else(|| format!("key rotation: cannot read the completion event {detail:?}"))
}

fn parse_completion(detail: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = detail
        .split_once("completed: ")?
        .1
        .split_whitespace()
        .collect();
    match words.as_slice() {
        [keys, "data", "keys", "rewrapped", "in", ms, "ms", ..] => {
            Some((keys.parse().ok()?, ms.parse().ok()?))
        }
        _ => None,
    }
}

/// Runs the workload; `cpu` reads the server's CPU ticks (if the bench started it).
pub(super) async fn run(
    clients: &Clients,
    ids: &Arc<Vec<String>>,
    picker: &Arc<Picker>,
    in_flight: usize,
    duration: Duration,
    cpu: impl Fn() -> Option<u64>,
) -> Result<(Figures, Option<f64>, Option<f64>), String> {
    let admin = clients
        .admin
        .first()
        .cloned()
        .ok_or("no admin connection")?;
    let no_shreds = Arc::new((Vec::new(), AtomicUsize::new(0)));
    let reads = || {
        op(
            "get-masked",
            clients,
            Arc::clone(ids),
            Arc::clone(picker),
            Arc::clone(&no_shreds),
        )
    };

    let alone = rotate(admin.clone(), Arc::new(AtomicBool::new(false))).await?;

    let before = cpu();
    let base = drive(in_flight, duration, None, reads()?).await;
    let base_cpu = super::cpu_us(before, cpu(), base.requests);

    let done = Arc::new(AtomicBool::new(false));
    let before = cpu();
    let rotation = tokio::spawn(rotate(admin, Arc::clone(&done)));
    // The reads stop when the rotation has ended (an hour at most).
    let during = drive_until(
        in_flight,
        Duration::from_secs(3600),
        None,
        Some(done),
        reads()?,
    )
    .await;
    let during_cpu = super::cpu_us(before, cpu(), during.requests);
    let under_reads = rotation
        .await
        .map_err(|e| format!("key rotation task failed: {e}"))??;
    Ok((
        Figures {
            alone,
            under_reads,
            base,
            during,
        },
        base_cpu,
        during_cpu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_completion_event() {
        assert_eq!(
            parse_completion(
                "rotation to epoch 3 completed: 100000 data keys rewrapped in 1234 ms"
            ),
            Some((100_000, 1234))
        );
        assert_eq!(parse_completion("rotation started (requested)"), None);
        assert_eq!(
            parse_completion("rotation to epoch 3 completed: many"),
            None
        );
    }
}
