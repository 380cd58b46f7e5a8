//! Refused calls, counted instead of written one by one: a flood of unauthenticated calls costs
//! a few events a minute, not one synced event per call. Each (source, method, reason) gets one
//! event per window with the exact count, so every refusal is still in the chain.
//!
//! Recording takes a short lock and touches a map of bounded size; it never waits for the
//! appender and never allocates per call beyond a new key. Knows nothing of gRPC: the caller
//! says which method (one it serves, or none) and why.

use std::{collections::HashMap, net::IpAddr, sync::Arc, sync::Mutex};

use super::Event;

/// The method written for a call to a method the vault does not serve: the caller's text is
/// never written.
pub const UNKNOWN_METHOD: &str = "(unknown)";

/// Distinct (source, method, reason) keys kept per window; past this, new sources are counted
/// together under `(other sources)`, so memory stays bounded while the count stays exact.
const MAX_KEYS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// `None`: unknown, or one of the sources past `MAX_KEYS`.
    source: Option<IpAddr>,
    /// `None`: a method the vault does not serve.
    method: Option<Arc<str>>,
    reason: &'static str,
}

#[derive(Debug, Default)]
struct Window {
    /// When the first refusal of this window was counted (ms since the epoch).
    from_ms: i64,
    counts: HashMap<Key, u64>,
}

/// The refusals of the current window.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    window: Mutex<Window>,
}

impl Refusals {
    /// Counts one refused call at `now_ms`.
    pub(super) fn record(
        &self,
        source: Option<IpAddr>,
        method: Option<&Arc<str>>,
        reason: &'static str,
        now_ms: i64,
    ) {
        // A poisoned lock only means another recorder panicked mid-insert; the counts are
        // still plain integers, so keep counting rather than lose refusals.
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if window.counts.is_empty() {
            window.from_ms = now_ms;
        }
        let mut key = Key {
            source,
            method: method.cloned(),
            reason,
        };
        if window.counts.len() >= MAX_KEYS && !window.counts.contains_key(&key) {
            key.source = None;
        }
        *window.counts.entry(key).or_insert(0) += 1;
    }

    /// Closes the window at `now_ms`: one event per key, with its count; empty when nothing was
    /// refused. The events are in a stable order (by method, source, reason).
    pub(super) fn take(&self, now_ms: i64) -> Vec<Event> {
        let window = {
            let mut window = self
                .window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::take(&mut *window)
        };
        let mut counts: Vec<(Key, u64)> = window.counts.into_iter().collect();
        counts.sort_by(|(a, _), (b, _)| {
            (a.method.as_deref(), a.source, a.reason).cmp(&(
                b.method.as_deref(),
                b.source,
                b.reason,
            ))
        });
        counts
            .into_iter()
            .map(|(key, count)| {
                let source = key
                    .source
                    .map_or_else(|| "(other sources)".to_owned(), |ip| ip.to_string());
                let calls = if count == 1 { "call" } else { "calls" };
                Event {
                    method: key.method.as_deref().unwrap_or(UNKNOWN_METHOD).to_owned(),
                    result: "UNAUTHENTICATED".into(),
                    detail: format!(
                        "{count} {calls} refused from {source} between {} and {now_ms} (ms since the epoch): {}",
                        window.from_ms, key.reason
                    ),
                    ..Event::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count an event of `take` states.
    fn refused_count(event: &Event) -> Option<u64> {
        if event.result != "UNAUTHENTICATED" {
            return None;
        }
        let (count, rest) = event.detail.split_once(' ')?;
        if !(rest.starts_with("call refused from ") || rest.starts_with("calls refused from ")) {
            return None;
        }
        count.parse().ok()
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_flood_is_one_event_per_key_with_the_exact_count() {
        let refusals = Refusals::default();
        let get: Arc<str> = Arc::from("Records/GetRecord");
        for _ in 0..10_000 {
            refusals.record(ip(1), None, "missing authorization metadata", 5);
        }
        for _ in 0..7 {
            refusals.record(ip(1), Some(&get), "missing authorization metadata", 6);
        }
        refusals.record(ip(2), Some(&get), "unknown or revoked token", 7);
        let events = refusals.take(60_005);
        assert_eq!(events.len(), 3, "{events:?}");
        let counts: Vec<(&str, Option<u64>)> = events
            .iter()
            .map(|e| (e.method.as_str(), refused_count(e)))
            .collect();
        assert_eq!(
            counts,
            [
                ("(unknown)", Some(10_000)),
                ("Records/GetRecord", Some(7)),
                ("Records/GetRecord", Some(1)),
            ]
        );
        assert!(
            events[0].detail.contains("10.0.0.1"),
            "{}",
            events[0].detail
        );
        assert!(events[0].detail.contains("between 5 and 60005"));
        assert!(events.iter().all(|e| e.result == "UNAUTHENTICATED"));
        // The window is closed: the next one starts empty.
        assert!(refusals.take(120_000).is_empty());
    }

    #[test]
    fn many_sources_stay_bounded_and_the_total_stays_exact() {
        let refusals = Refusals::default();
        let mut total = 0u64;
        for a in 0..=255u8 {
            for b in 0..=15u8 {
                refusals.record(
                    Some(IpAddr::from([10, 1, b, a])),
                    None,
                    "missing authorization metadata",
                    1,
                );
                total += 1;
            }
        }
        let events = refusals.take(2);
        assert!(events.len() <= MAX_KEYS + 1, "{}", events.len());
        let sum: u64 = events.iter().filter_map(refused_count).sum();
        assert_eq!(sum, total);
        assert!(events.iter().any(|e| e.detail.contains("(other sources)")));
    }
}
