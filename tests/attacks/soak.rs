//! The crash soak: `STRONGROOM_SOAK_CYCLES` cycles (default 3; `scripts/soak.sh` runs 1,000) of
//! concurrent creates, updates, shreds and policy changes against the `strongroom` binary, kill -9
//! at a random moment, restart, and check that every acknowledged write is whole, every
//! acknowledged shred stays NOT_FOUND, acknowledged policy versions are kept, and the audit chain
//! verifies.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use strongroom::api::pb;
use tonic::{Code, Status};

use crate::support::*;

/// What a record holds, as far as the soak knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Live {
        version: u64,
        name: String,
        notes: String,
    },
    Shredded,
}

/// One record a writer made: its last acknowledged state, and the state of an operation that
/// was in flight when the vault died (it may or may not have been applied).
#[derive(Debug, Clone)]
struct Rec {
    id: String,
    acked: State,
    in_doubt: Option<State>,
    touched: bool,
}

#[derive(Debug, Default)]
struct Tally {
    creates: u64,
    updates: u64,
    shreds: u64,
    policy_changes: u64,
    checked: u64,
    in_doubt_applied: u64,
    in_doubt_not_applied: u64,
}

fn soak_fields(n: u64) -> (String, String) {
    (
        format!("Ada {} Lovelace", letters(n)),
        format!("ref {}", letters(n)),
    )
}

/// Codes a call gets when the vault is killed under it.
fn died(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
    )
}

/// One writer: creates, updates and shreds its own records until stopped or the vault dies.
async fn writer(
    mut c: strongroom::client::Client,
    mut recs: Vec<Rec>,
    mut rng: StdRng,
    mut n: u64,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
) -> (Vec<Rec>, u64, [u64; 3]) {
    let mut acked = [0u64; 3];
    let live: fn(&Rec) -> bool = |r| matches!(r.acked, State::Live { .. });
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (name, notes) = soak_fields(n);
        let live_count = recs.iter().filter(|r| live(r)).count();
        let op = if live_count == 0 {
            0
        } else {
            rng.gen_range(0..10)
        };
        let result = match op {
            0..=5 => {
                let mut fields = customer("x");
                fields[0].value.clone_from(&name);
                fields[7].value.clone_from(&notes);
                match c
                    .records
                    .create_record(pb::CreateRecordRequest {
                        collection: "customers".into(),
                        fields,
                        honeytoken: false,
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        recs.push(Rec {
                            id: r.id,
                            acked: State::Live {
                                version: r.version,
                                name,
                                notes,
                            },
                            in_doubt: None,
                            touched: true,
                        });
                        acked[0] += 1;
                        Ok(())
                    }
                    // A create in flight has no id: nothing to check.
                    Err(s) => Err(s),
                }
            }
            6..=8 => {
                let pick = rng.gen_range(0..live_count);
                let rec = recs.iter_mut().filter(|r| live(r)).nth(pick).unwrap();
                let State::Live { version, .. } = rec.acked else {
                    unreachable!()
                };
                rec.touched = true;
                let attempt = State::Live {
                    version: version + 1,
                    name: name.clone(),
                    notes: notes.clone(),
                };
                match c
                    .records
                    .update_record(pb::UpdateRecordRequest {
                        id: rec.id.clone(),
                        set: vec![field("name", &name), field("notes", &notes)],
                        clear: vec![],
                        expected_version: Some(version),
                    })
                    .await
                {
                    Ok(r) => {
                        assert_eq!(r.into_inner().version, version + 1, "{}", rec.id);
                        rec.acked = attempt;
                        acked[1] += 1;
                        Ok(())
                    }
                    Err(s) => {
                        rec.in_doubt = Some(attempt);
                        Err(s)
                    }
                }
            }
            _ => {
                let pick = rng.gen_range(0..live_count);
                let rec = recs.iter_mut().filter(|r| live(r)).nth(pick).unwrap();
                rec.touched = true;
                match c
                    .records
                    .delete_record(pb::DeleteRecordRequest {
                        id: rec.id.clone(),
                        wait_for_purge: false,
                    })
                    .await
                {
                    Ok(_) => {
                        rec.acked = State::Shredded;
                        acked[2] += 1;
                        Ok(())
                    }
                    Err(s) => {
                        rec.in_doubt = Some(State::Shredded);
                        Err(s)
                    }
                }
            }
        };
        if let Err(status) = result {
            // Before the kill, no call may fail; after it, only as a dead server makes it fail.
            assert!(
                killed.load(Ordering::SeqCst) && died(&status),
                "a call failed while the vault was up: {:?} {}",
                status.code(),
                status.message()
            );
            break;
        }
    }
    (recs, n, acked)
}

/// Applies a policy with one extra marketing rule, then rolls back, over and over. Admin rights
/// are never touched, so the writers and the checks keep theirs.
async fn policy_changer(
    mut c: strongroom::client::Client,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    last_acked: Arc<Mutex<u64>>,
) -> u64 {
    let base = std::fs::read_to_string(policies_dir().join("policy.csv")).unwrap();
    let with_rule =
        format!("{base}\np, role:marketing, customers.phone, read_masked, marketing, allow\n");
    let mut changes = 0;
    while !stop.load(Ordering::Relaxed) {
        let current = match c
            .policies
            .get_policy(pb::GetPolicyRequest { version: None })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(s) => {
                assert!(killed.load(Ordering::SeqCst) && died(&s), "{s:?}");
                break;
            }
        };
        let info = current.info.unwrap_or_default();
        let result = if current
            .text
            .contains("customers.phone, read_masked, marketing")
        {
            c.policies
                .rollback_policy(pb::RollbackPolicyRequest {
                    to_version: info.from_version.max(1),
                    comment: "soak rollback".into(),
                    expected_version: Some(info.version),
                })
                .await
        } else {
            c.policies
                .apply_policy(pb::ApplyPolicyRequest {
                    text: with_rule.clone(),
                    comment: "soak apply".into(),
                    expected_version: Some(info.version),
                })
                .await
        };
        match result {
            Ok(r) => {
                let v = r.into_inner().version.unwrap_or_default().version;
                *last_acked.lock().unwrap() = v;
                changes += 1;
            }
            Err(s) => {
                assert!(killed.load(Ordering::SeqCst) && died(&s), "{s:?}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    changes
}

/// Reads `rec` back as admin and settles it: the acknowledged state, or the in-doubt one.
async fn check(admin: &mut strongroom::client::Client, rec: &mut Rec, tally: &mut Tally) {
    let observed = match get(admin, &rec.id, "support").await {
        Ok(resp) => {
            assert_eq!(
                resp.fields.len(),
                8,
                "record {} is partial: {:?}",
                rec.id,
                view(&resp)
            );
            State::Live {
                version: resp.version,
                name: value_of(&resp, "name").unwrap().0.to_owned(),
                notes: value_of(&resp, "notes").unwrap().0.to_owned(),
            }
        }
        Err(s) if s.code() == Code::NotFound => State::Shredded,
        Err(s) => panic!("record {}: {:?} {}", rec.id, s.code(), s.message()),
    };
    tally.checked += 1;
    if observed == rec.acked {
        if rec.in_doubt.take().is_some() {
            tally.in_doubt_not_applied += 1;
        }
    } else if rec.in_doubt.as_ref() == Some(&observed) {
        tally.in_doubt_applied += 1;
        rec.acked = observed;
        rec.in_doubt = None;
    } else if rec.acked == State::Shredded {
        panic!(
            "REVIVED: record {} was shredded (acknowledged) and reads back as {observed:?}",
            rec.id
        );
    } else {
        panic!(
            "LOST: record {} was acknowledged as {:?} (in doubt: {:?}) and reads back as {observed:?}",
            rec.id, rec.acked, rec.in_doubt
        );
    }
    rec.touched = false;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_soak() {
    const WRITERS: u64 = 6;
    let cycles: u64 = std::env::var("STRONGROOM_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("STRONGROOM_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("soak: {cycles} cycles, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut vault = ChildVault::start(&data);
    let token = vault
        .token
        .clone()
        .expect("the first start prints the token");
    let mut recs: Vec<Vec<Rec>> = vec![Vec::new(); WRITERS as usize];
    let mut counters: Vec<u64> = (0..WRITERS).map(|w| w * 1_000_000_000).collect();
    let mut tally = Tally::default();
    let last_policy = Arc::new(Mutex::new(0u64));
    for cycle in 0..cycles {
        let client = strongroom::client::connect(&vault.addr, &token)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS as usize)
            .map(|w| {
                tokio::spawn(writer(
                    client.clone(),
                    std::mem::take(&mut recs[w]),
                    StdRng::seed_from_u64(rng.r#gen()),
                    counters[w],
                    stop.clone(),
                    killed.clone(),
                ))
            })
            .collect();
        let changer = tokio::spawn(policy_changer(
            client.clone(),
            stop.clone(),
            killed.clone(),
            last_policy.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..600))).await;
        killed.store(true, Ordering::SeqCst);
        vault.kill();
        stop.store(true, Ordering::SeqCst);
        for (w, task) in writers.into_iter().enumerate() {
            let (r, n, acked) = task.await.unwrap();
            recs[w] = r;
            counters[w] = n;
            tally.creates += acked[0];
            tally.updates += acked[1];
            tally.shreds += acked[2];
        }
        tally.policy_changes += changer.await.unwrap();
        drop(client);

        vault = ChildVault::start(&data);
        let mut admin = strongroom::client::connect(&vault.addr, &token)
            .await
            .unwrap();
        // Every record written or in doubt this cycle, and a sample of the older ones.
        for writer_recs in &mut recs {
            let old: Vec<usize> = (0..writer_recs.len())
                .filter(|&i| !writer_recs[i].touched)
                .collect();
            let sample: Vec<usize> = (0..old.len().min(20))
                .map(|_| old[rng.gen_range(0..old.len())])
                .collect();
            for (i, rec) in writer_recs.iter_mut().enumerate() {
                if rec.touched || sample.contains(&i) {
                    check(&mut admin, rec, &mut tally).await;
                }
            }
            // Keep what each cycle samples bounded: forget the oldest records (each was read
            // back after at least one restart).
            if writer_recs.len() > 2000 {
                writer_recs.drain(..writer_recs.len() - 2000);
            }
        }
        let policy = admin
            .policies
            .get_policy(pb::GetPolicyRequest { version: None })
            .await
            .unwrap()
            .into_inner();
        let current = policy.info.unwrap_or_default().version;
        let acked_policy = *last_policy.lock().unwrap();
        assert!(
            current >= acked_policy,
            "policy version {acked_policy} was acknowledged; after the restart the vault is at {current}"
        );
        let report = admin
            .audit
            .verify_log(pb::VerifyLogRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            report.ok,
            "cycle {cycle}: the audit chain fails: {report:?}"
        );
        eprintln!(
            "soak: cycle {} done: creates {} updates {} shreds {} policy changes {} acknowledged; \
             {} reads checked (in doubt: {} applied, {} not); lost 0, revived 0; audit verified ({} events)",
            cycle + 1,
            tally.creates,
            tally.updates,
            tally.shreds,
            tally.policy_changes,
            tally.checked,
            tally.in_doubt_applied,
            tally.in_doubt_not_applied,
            report.checked
        );
    }
    assert!(tally.creates > 0, "no write was acknowledged");
    eprintln!("soak: {cycles} cycles, {tally:?}, lost 0, revived 0, verify failures 0");
}
