//! The load generator: M requests in flight over N connections for a duration (or a count),
//! latencies recorded per request, percentiles computed once at the end.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// What one run of a workload measured.
#[derive(Debug, Clone, Default)]
pub(super) struct Stats {
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) elapsed: Duration,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
    pub(super) first_error: Option<String>,
}

impl Stats {
    pub(super) fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    u64::from(sorted[rank.min(sorted.len() - 1)])
}

/// Runs `op(n)` (n = a global request counter) from `in_flight` tasks until `duration` has
/// passed or `max_requests` were started.
pub(super) async fn drive<F, Fut>(
    in_flight: usize,
    duration: Duration,
    max_requests: Option<u64>,
    op: F,
) -> Stats
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    drive_until(in_flight, duration, max_requests, None, op).await
}

/// Like [`drive`], and stops early once `stop` is set (checked before each request).
pub(super) async fn drive_until<F, Fut>(
    in_flight: usize,
    duration: Duration,
    max_requests: Option<u64>,
    stop: Option<Arc<AtomicBool>>,
    op: F,
) -> Stats
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let limit = max_requests.unwrap_or(u64::MAX);
    let mut tasks = Vec::with_capacity(in_flight);
    for _ in 0..in_flight.max(1) {
        let (op, counter, stop) = (op.clone(), Arc::clone(&counter), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(4096);
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= limit
                    || Instant::now() >= deadline
                    || stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    break;
                }
                let t = Instant::now();
                match op(n).await {
                    Ok(()) => {
                        latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX))
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut stats = Stats::default();
    for task in tasks {
        if let Ok((latencies, errors, first_error)) = task.await {
            all.extend(latencies);
            stats.errors += errors;
            if stats.first_error.is_none() {
                stats.first_error = first_error;
            }
        }
    }
    stats.elapsed = start.elapsed();
    all.sort_unstable();
    stats.requests = all.len() as u64;
    stats.p50_us = percentile(&all, 0.50);
    stats.p99_us = percentile(&all, 0.99);
    stats.p999_us = percentile(&all, 0.999);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 501);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[tokio::test]
    async fn drives_a_count_and_counts_errors() {
        let stats = drive(4, Duration::from_secs(60), Some(100), |n| async move {
            if n % 10 == 0 {
                Err("boom".to_owned())
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(stats.requests + stats.errors, 100);
        assert_eq!(stats.errors, 10);
        assert_eq!(stats.first_error.as_deref(), Some("boom"));
    }
}
