//! Per-subject limits (breach containment): requests per second, and plaintext disclosures of
//! sensitive fields per hour, from the `[rate_limits]` table of the config. A stolen token can
//! then drain only so much, and its draining is one alert in the audit log per window.
//!
//! Which limit applies, each of the two on its own: the subject's entry if it sets it, else the
//! most generous entry among the principal's roles that set it (roles grant), else `default`,
//! else none. Windows are fixed: one starts at a subject's first counted call after the last
//! one ended, and lasts a second (requests) or an hour (disclosures), by `config.clock`.
//!
//! Counting takes one short lock (exact under concurrency: two racing reads never both get the
//! last disclosure) and touches only subjects that have a limit. Past a limit, the first refusal
//! of a window hands back one audit event and logs one warning; the rest are refused quietly, so
//! a flood costs bounded log space. Depends on `domain` and `audit`; knows nothing of gRPC.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use crate::{
    audit::{Call, Event, SEVERITY_WARNING},
    domain::{Clock, Principal, Role, Subject},
};

/// How long a window of counted requests lasts (ms).
pub const REQUEST_WINDOW_MS: i64 = 1000;
/// How long a window of counted disclosures lasts (ms).
pub const DISCLOSURE_WINDOW_MS: i64 = 3_600_000;

/// The audit method of the alert of a spent request limit.
pub const REQUEST_LIMIT_METHOD: &str = "Limits/RequestLimit";
/// The audit method of the alert of a spent disclosure limit.
pub const DISCLOSURE_LIMIT_METHOD: &str = "Limits/DisclosureLimit";
/// The per-field outcome, in a read's audit event, of a field withheld by the disclosure limit.
pub const DISCLOSURE_LIMIT_OUTCOME: &str = "disclosure limit";

/// One entry of `[rate_limits]`. A limit left unset says nothing: the next entry in line
/// (roles, then `default`) decides it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitRule {
    /// Calls per second (any service behind the authenticator; health is not).
    pub requests_per_second: Option<u32>,
    /// Fields the schema marks sensitive disclosed in plaintext per hour (masked ones do not
    /// count).
    pub sensitive_disclosures_per_hour: Option<u32>,
}

/// The `[rate_limits]` table, parsed: a default, and entries per role and per subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectLimits {
    /// For principals no entry of theirs speaks for.
    pub default: Option<LimitRule>,
    /// Per role.
    pub roles: BTreeMap<Role, LimitRule>,
    /// Per subject; wins over its roles' entries.
    pub subjects: BTreeMap<Subject, LimitRule>,
}

impl SubjectLimits {
    /// The limits that apply to `principal` (see the module docs for the order).
    pub fn resolve(&self, principal: &Principal) -> LimitRule {
        let pick = |limit: fn(&LimitRule) -> Option<u32>| {
            self.subjects
                .get(&principal.subject)
                .and_then(limit)
                .or_else(|| {
                    principal
                        .roles
                        .iter()
                        .filter_map(|r| self.roles.get(r).and_then(limit))
                        .max()
                })
                .or_else(|| self.default.as_ref().and_then(limit))
        };
        LimitRule {
            requests_per_second: pick(|r| r.requests_per_second),
            sensitive_disclosures_per_hour: pick(|r| r.sensitive_disclosures_per_hour),
        }
    }
}

/// One subject's count in its current window.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// `None` until the first counted call.
    start_ms: Option<i64>,
    used: u64,
    /// Whether this window's alert has been handed out.
    alerted: bool,
}

impl Window {
    /// Starts a new window at `now_ms` if none is open (or the clock went back past its start).
    fn turn(&mut self, now_ms: i64, length_ms: i64) {
        let open = self
            .start_ms
            .is_some_and(|start| (start..start.saturating_add(length_ms)).contains(&now_ms));
        if !open {
            *self = Self {
                start_ms: Some(now_ms),
                ..Self::default()
            };
        }
    }

    /// Whether this is the first call to ask for the window's alert.
    fn first_alert(&mut self) -> bool {
        !std::mem::replace(&mut self.alerted, true)
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: Window,
    disclosures: Window,
}

/// A call refused because its subject spent its requests for this second.
#[derive(Debug)]
pub struct RequestLimited {
    limit: u32,
    /// The window's one alert, for the audit log; `None` after the first refusal of a window.
    pub alert: Option<Box<Event>>,
}

impl RequestLimited {
    /// The message for the caller: the limit, never the caller's data.
    pub fn message(&self) -> String {
        format!(
            "request limit: at most {} requests per second for this subject; retry in a second",
            self.limit
        )
    }
}

/// What a read may disclose of the sensitive fields it would show in plaintext.
#[derive(Debug)]
pub struct Allowance {
    /// How many of them may still be disclosed in plaintext; the rest are withheld.
    pub granted: usize,
    /// Why the rest are withheld (empty when nothing is).
    pub reason: String,
    /// The window's one alert, for the audit log (with the read's event).
    pub alert: Option<Event>,
}

/// The per-subject counters, and the rules they are held to.
#[derive(Debug, Default)]
pub struct Limiter {
    rules: SubjectLimits,
    clock: Clock,
    counters: Mutex<HashMap<Subject, Counters>>,
}

impl Limiter {
    /// A limiter holding principals to `rules`, its windows turning by `clock`.
    pub fn new(rules: SubjectLimits, clock: Clock) -> Self {
        Self {
            rules,
            clock,
            counters: Mutex::default(),
        }
    }

    /// Runs `f` on `subject`'s counters.
    fn with_counters<T>(&self, subject: &Subject, f: impl FnOnce(&mut Counters) -> T) -> T {
        // A poisoned lock only means a counter update panicked; the counts are plain integers,
        // so keep counting rather than stop limiting.
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = counters.get_mut(subject) {
            return f(c);
        }
        f(counters.entry(subject.clone()).or_default())
    }

    /// Counts one call of `principal` to `method` (its audit name), or refuses it when the
    /// principal's requests for this second are spent.
    ///
    /// # Errors
    /// `RequestLimited`, with the window's alert the first time.
    pub fn admit(&self, principal: &Principal, method: &str) -> Result<(), RequestLimited> {
        self.admit_n(principal, method, 1)
    }

    /// Counts `n` requests of `principal` at once (the items of a batch call), or refuses them
    /// all when fewer than `n` are left of this second's.
    ///
    /// # Errors
    /// `RequestLimited`, with the window's alert the first time.
    pub fn admit_n(
        &self,
        principal: &Principal,
        method: &str,
        n: u64,
    ) -> Result<(), RequestLimited> {
        let Some(limit) = self.rules.resolve(principal).requests_per_second else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        let refused = self.with_counters(&principal.subject, |c| {
            let w = &mut c.requests;
            w.turn(now, REQUEST_WINDOW_MS);
            if w.used.saturating_add(n) <= u64::from(limit) {
                w.used += n;
                return None;
            }
            Some((w.first_alert(), w.start_ms.unwrap_or(now)))
        });
        let Some((alert, start)) = refused else {
            return Ok(());
        };
        let alert = alert.then(|| {
            tracing::warn!(
                subject = %principal.subject,
                limit,
                method,
                "request limit reached: calls refused until the second ends (one warning per subject per window)"
            );
            Box::new(Event {
                subject: principal.subject.as_str().to_owned(),
                roles: principal.role_names(),
                method: REQUEST_LIMIT_METHOD.to_owned(),
                result: "RESOURCE_EXHAUSTED".into(),
                detail: format!(
                    "request limit of {limit} per second reached (window {start} to {} ms since \
                     the epoch, first refused call {method}); its calls are refused until the \
                     window ends, with one alert per window",
                    start.saturating_add(REQUEST_WINDOW_MS)
                ),
                severity: SEVERITY_WARNING.to_owned(),
                ..Event::default()
            })
        });
        Err(RequestLimited { limit, alert })
    }

    /// Reserves, for a read by `principal`, plaintext disclosures of `wanted` sensitive fields:
    /// as many as its limit has left this hour. Reserved before anything is decrypted, so racing
    /// reads together never disclose more than the limit (a read that then fails has used its
    /// share: the count errs on the side of disclosing less).
    pub fn disclose(&self, principal: &Principal, call: &Call, wanted: usize) -> Allowance {
        let unlimited = Allowance {
            granted: wanted,
            reason: String::new(),
            alert: None,
        };
        if wanted == 0 {
            return unlimited;
        }
        let Some(limit) = self.rules.resolve(principal).sensitive_disclosures_per_hour else {
            return unlimited;
        };
        let now = self.clock.now_ms();
        let (granted, used, start, alert) = self.with_counters(&principal.subject, |c| {
            let w = &mut c.disclosures;
            w.turn(now, DISCLOSURE_WINDOW_MS);
            let left = u64::from(limit).saturating_sub(w.used);
            let granted = left.min(wanted as u64);
            w.used += granted;
            let alert = granted < wanted as u64 && w.first_alert();
            (granted, w.used, w.start_ms.unwrap_or(now), alert)
        });
        // `granted <= wanted`, a usize: the conversion cannot fail, and would grant none if it did.
        let granted = usize::try_from(granted).unwrap_or(0);
        let end = start.saturating_add(DISCLOSURE_WINDOW_MS);
        let alert = alert.then(|| {
            tracing::warn!(
                subject = %principal.subject,
                limit,
                disclosed = used,
                request_id = %call.request_id,
                "disclosure limit reached: sensitive fields withheld until the hour ends (one warning per subject per window)"
            );
            Event {
                result: "RESOURCE_EXHAUSTED".into(),
                detail: format!(
                    "disclosure limit of {limit} sensitive fields in plaintext per hour reached: \
                     {used} disclosed in the window {start} to {end} (ms since the epoch); \
                     further ones are withheld until it ends, with one alert per window"
                ),
                method: DISCLOSURE_LIMIT_METHOD.to_owned(),
                severity: SEVERITY_WARNING.to_owned(),
                ..call.event(principal)
            }
        });
        Allowance {
            granted,
            reason: if granted < wanted {
                format!(
                    "withheld: disclosure limit of {limit} sensitive fields in plaintext per hour \
                     for this subject reached; disclosed again after {end} (ms since the epoch)"
                )
            } else {
                String::new()
            },
            alert,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::*;

    fn principal(subject: &str, roles: &[&str]) -> Principal {
        Principal::new(
            Subject::parse(subject, "s").unwrap_or_else(|e| panic!("{e}")),
            roles
                .iter()
                .map(|r| Role::parse(r, "r").unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        )
    }

    fn rule(rps: Option<u32>, per_hour: Option<u32>) -> LimitRule {
        LimitRule {
            requests_per_second: rps,
            sensitive_disclosures_per_hour: per_hour,
        }
    }

    fn rules() -> SubjectLimits {
        let role = |r: &str| Role::parse(r, "r").unwrap_or_else(|e| panic!("{e}"));
        let subject = |s: &str| Subject::parse(s, "s").unwrap_or_else(|e| panic!("{e}"));
        SubjectLimits {
            default: Some(rule(Some(1), None)),
            roles: [
                (role("role:support"), rule(Some(5), Some(10))),
                (role("role:billing"), rule(Some(50), None)),
                (role("role:marketing"), rule(None, Some(3))),
            ]
            .into(),
            subjects: [(subject("svc:crm"), rule(None, Some(1000)))].into(),
        }
    }

    #[test]
    fn the_subject_wins_then_the_most_generous_role_then_the_default() {
        let rules = rules();
        let of = |s: &str, roles: &[&str]| rules.resolve(&principal(s, roles));
        assert_eq!(of("svc:a", &["role:support"]), rule(Some(5), Some(10)));
        // Several roles: each limit from the most generous entry that sets it.
        assert_eq!(
            of("svc:a", &["role:support", "role:billing"]),
            rule(Some(50), Some(10))
        );
        assert_eq!(
            of("svc:a", &["role:support", "role:marketing"]),
            rule(Some(5), Some(10))
        );
        // A limit no role entry sets comes from the default, or is none.
        assert_eq!(of("svc:a", &["role:marketing"]), rule(Some(1), Some(3)));
        assert_eq!(of("svc:a", &["role:admin"]), rule(Some(1), None));
        // The subject's entry wins for the limit it sets; its roles' for the other.
        assert_eq!(of("svc:crm", &["role:support"]), rule(Some(5), Some(1000)));
        // No entries at all: unlimited.
        assert_eq!(
            SubjectLimits::default().resolve(&principal("svc:a", &["role:support"])),
            rule(None, None)
        );
    }

    #[test]
    fn requests_trip_at_the_limit_once_per_window_and_per_subject() {
        let clock = Clock::manual(1_000_000);
        let limiter = Limiter::new(rules(), clock.clone());
        let support = principal("svc:a", &["role:support"]);
        let other = principal("svc:b", &["role:support"]);
        for _ in 0..5 {
            assert!(limiter.admit(&support, "Records/GetRecord").is_ok());
        }
        let first = limiter.admit(&support, "Records/GetRecord").err();
        let alert = first.as_ref().and_then(|r| r.alert.as_ref());
        assert_eq!(alert.map(|e| e.method.as_str()), Some(REQUEST_LIMIT_METHOD));
        assert!(
            first
                .as_ref()
                .is_some_and(|r| r.message().contains("at most 5 requests per second"))
        );
        for _ in 0..100 {
            let refused = limiter.admit(&support, "Records/GetRecord").err();
            assert!(refused.is_some_and(|r| r.alert.is_none()));
        }
        assert!(limiter.admit(&other, "Records/GetRecord").is_ok());
        clock.advance(Duration::from_millis(999));
        assert!(limiter.admit(&support, "Records/GetRecord").is_err());
        clock.advance(Duration::from_millis(1));
        assert!(limiter.admit(&support, "Records/GetRecord").is_ok());
    }

    #[test]
    fn disclosures_are_granted_up_to_the_limit_and_then_withheld() {
        let clock = Clock::manual(0);
        let limiter = Limiter::new(rules(), clock.clone());
        let support = principal("svc:a", &["role:support"]);
        let call = Call::new("Records/GetRecord");
        let a = limiter.disclose(&support, &call, 7);
        assert_eq!((a.granted, a.alert.is_none()), (7, true));
        // Exactly at the limit: nothing withheld yet, so no alert.
        let b = limiter.disclose(&support, &call, 3);
        assert_eq!((b.granted, b.alert.is_none()), (3, true));
        let c = limiter.disclose(&support, &call, 2);
        assert_eq!(c.granted, 0);
        assert!(c.reason.contains("disclosure limit of 10"), "{}", c.reason);
        let alert = c.alert.unwrap_or_else(|| panic!("no alert"));
        assert_eq!(alert.method, DISCLOSURE_LIMIT_METHOD);
        assert!(alert.detail.contains("10 disclosed"), "{}", alert.detail);
        assert!(limiter.disclose(&support, &call, 1).alert.is_none());
        // Nothing wanted costs nothing.
        assert_eq!(limiter.disclose(&support, &call, 0).granted, 0);
        clock.advance(Duration::from_secs(3600));
        let d = limiter.disclose(&support, &call, 12);
        assert_eq!(d.granted, 10);
        assert!(d.alert.is_some());
    }

    #[test]
    fn racing_reads_never_pass_the_limit() {
        let limiter = Arc::new(Limiter::new(rules(), Clock::manual(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    let support = principal("svc:a", &["role:support"]);
                    let call = Call::new("Records/GetRecord");
                    (0..100)
                        .map(|_| limiter.disclose(&support, &call, 1))
                        .map(|a| (a.granted, usize::from(a.alert.is_some())))
                        .fold((0, 0), |(g, n), (a, b)| (g + a, n + b))
                })
            })
            .collect();
        let (granted, alerts) = threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| panic!("thread panicked")))
            .fold((0, 0), |(g, n), (a, b)| (g + a, n + b));
        assert_eq!((granted, alerts), (10, 1));
    }

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap_or_else(|e| panic!("{e}")).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_flood_is_one_warning_per_subject_per_window() {
        let clock = Clock::manual(0);
        let limiter = Limiter::new(rules(), clock.clone());
        let support = principal("svc:a", &["role:support"]);
        let call = Call::new("Records/GetRecord");
        let log = logged(|| {
            for _ in 0..10_000 {
                let _ = limiter.admit(&support, "Records/GetRecord");
                let _ = limiter.disclose(&support, &call, 1);
            }
        });
        assert_eq!(log.matches("request limit reached").count(), 1, "{log}");
        assert_eq!(log.matches("disclosure limit reached").count(), 1, "{log}");
        clock.advance(Duration::from_secs(1));
        let log = logged(|| {
            for _ in 0..100 {
                let _ = limiter.admit(&support, "Records/GetRecord");
            }
        });
        assert_eq!(log.matches("request limit reached").count(), 1, "{log}");
    }
}
