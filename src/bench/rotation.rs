//! The `rotation` workload: how fast a key rotation rewraps the data keys, and what it costs
//! reads. In one vault, on the same records: a rotation with no load (the rewrap rate alone),
//! then `get-masked` without a rotation, then `get-masked` again for exactly as long as a second
//! rotation runs. The rewrap rate is the vault's own figure from the rotation's audit event
//! (keys rewrapped, milliseconds); the bench learns of the end from that event, followed live,
//! rather than by polling the key status (each status counts every key in the key store). The vault's rate
//! limit (`rewrap_per_second`) applies: `--rewrap-per-second` sets it on the vault the bench
//! starts.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use super::{
    Row,
    background::{Compared, Reads},
    workloads::{Clients, status},
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
    /// get-masked with no rotation, and while it ran.
    pub(super) reads: Compared,
}

impl Figures {
    /// The report's rows.
    pub(super) fn rows(&self) -> Vec<Row> {
        self.reads
            .rows("get-masked, no rotation", "get-masked, rotating")
    }
}

fn text(s: &tonic::Status) -> String {
    format!("key rotation: {}", status(s))
}

/// Starts a rotation and returns once it has ended; `done` is set then. The end is the
/// rotation's completion event, followed live from the audit log: polling the key status
/// would count the key store's keys on every call and load the vault being measured.
/// `after` is the audit sequence number of the previous rotation's end (0 if none): the
/// stream replays from there, so an end that comes before the stream is up is not missed.
async fn rotate(
    mut admin: Client,
    done: Arc<AtomicBool>,
    after: u64,
) -> Result<(Rewrap, u64), String> {
    if admin
        .keys
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .map_err(|s| text(&s))?
        .into_inner()
        .rotating
    {
        return Err("a key rotation is already in progress in this vault".into());
    }
    let mut events = admin
        .audit
        .follow_events(pb::FollowEventsRequest {
            filter: Some(pb::EventFilter {
                method: "Keys/Rotate".into(),
                ..pb::EventFilter::default()
            }),
            after_seq: Some(after),
        })
        .await
        .map_err(|s| text(&s))?
        .into_inner();
    let started = Instant::now();
    admin
        .keys
        .rotate_keys(pb::RotateKeysRequest {})
        .await
        .map_err(|s| text(&s))?;
    loop {
        let event = events
            .message()
            .await
            .map_err(|s| text(&s))?
            .ok_or("key rotation: the audit stream ended before the rotation did")?;
        if let Some((keys, server_ms)) = parse_completion(&event.detail) {
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let rewrap = Rewrap {
                keys,
                server_ms,
                wall: started.elapsed(),
            };
            return Ok((rewrap, event.seq));
        }
    }
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
) -> Result<Figures, String> {
    let admin = clients
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
    let (alone, seq) = rotate(admin.clone(), Arc::new(AtomicBool::new(false)), 0).await?;
    let base = reads.alone(duration).await?;
    let (during_stats, during_cpu, (under_reads, _)) = reads
        .during("key rotation", |done| rotate(admin, done, seq))
        .await?;
    Ok(Figures {
        alone,
        under_reads,
        reads: Compared {
            base,
            during: (during_stats, during_cpu),
        },
    })
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
