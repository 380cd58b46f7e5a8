//! Rotation under load (issue 9): 4 writers (create, update) and 4 readers (get, a few shreds)
//! run against the real `strongroom serve` binary while a rotation rewraps every seeded key; the
//! vault is killed with SIGKILL mid-rotation and restarted, and the rotation finishes by itself.
//! Then: no acknowledged write is lost, no read failed but NOT_FOUND of an id the test shredded,
//! every key is on the new epoch, the old epoch is gone from the keyring file's bytes, and the
//! audit log verifies and holds the rotation's start, the epoch's destruction and its end.
//!
//! Counts only, no timing. `STRONGROOM_ROTATION_KEYS=100000` seeds the 100,000 keys
//! (the default is smaller so that `make test` stays quick); `STRONGROOM_BIN` runs another
//! build of the server (a release build seeds 100,000 keys much faster).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use strongroom::{
    api::pb,
    client::{self, Client},
};
use tonic::Code;

use crate::support::{ChildVault, customer, events_of, field, get, letters, value_of};

/// Seeded keys unless `STRONGROOM_ROTATION_KEYS` says otherwise.
const DEFAULT_KEYS: usize = 3_000;
const WRITERS: usize = 4;
const READERS: usize = 4;
/// Shreds each reader does of ids of its own.
const SHREDS_PER_READER: usize = 5;

fn keys_wanted() -> usize {
    std::env::var("STRONGROOM_ROTATION_KEYS")
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(DEFAULT_KEYS)
        .max(500)
}

/// The email of seeded customer `i`.
fn seed_email(i: usize) -> String {
    format!("ada.s{}@example.com", letters(i as u64))
}

fn email_of(resp: &pb::GetRecordResponse) -> String {
    value_of(resp, "email")
        .map(|(v, _)| v.to_owned())
        .unwrap_or_default()
}

async fn connect(vault: &ChildVault, token: &str) -> Client {
    client::connect(&vault.addr, token).await.unwrap()
}

async fn status(c: &mut Client) -> pb::KeyStatus {
    c.keys
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The hex of epoch `epoch`'s key in a `file` keyring, if the file holds it.
fn epoch_hex(keyring: &Path, epoch: u32) -> Option<String> {
    let text = std::fs::read_to_string(keyring).unwrap();
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("epoch {epoch} "))
            .map(|h| h.trim().to_owned())
    })
}

/// Creates `n` customers from 64 tasks over 4 connections; their ids in order.
async fn seed(vault: &ChildVault, token: &str, n: usize) -> Vec<String> {
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(connect(vault, token).await);
    }
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(Mutex::new(vec![String::new(); n]));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (mut c, next, ids) = (conns[t % 4].clone(), next.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap();
                if i >= n {
                    return;
                }
                let id =
                    crate::support::create(&mut c, customer(&format!("s{}", letters(i as u64))))
                        .await;
                ids.lock().unwrap()[i] = id;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(ids).unwrap().into_inner().unwrap()
}

/// What the writers know: the email each acknowledged write left, and the write in flight
/// when the vault was killed (either outcome is allowed for it, nothing else).
#[derive(Default)]
struct Ledger {
    /// id -> email of the last acknowledged create or update.
    acked: BTreeMap<String, String>,
    /// id -> email of an update in flight at the kill.
    uncertain: BTreeMap<String, String>,
    /// Creates in flight at the kill (no id known: the record may or may not exist).
    uncertain_creates: u64,
    /// Records each writer created (id -> writer).
    created: BTreeMap<String, usize>,
    /// Acknowledged writes.
    writes: u64,
    /// Errors while the vault was up.
    errors: Vec<String>,
}

/// What the readers saw.
#[derive(Default)]
struct Reads {
    ok: AtomicU64,
    not_found_shredded: AtomicU64,
    errors: Mutex<Vec<String>>,
}

struct Shared {
    /// Seeded ids the readers read (no writer touches them), with their index.
    pool: Vec<(usize, String)>,
    /// Ids a shred was sent for (before the request: a read may race it).
    shredded: Mutex<BTreeSet<String>>,
    /// Ids whose shred was acknowledged.
    shred_acked: Mutex<BTreeSet<String>>,
    ledger: Mutex<Ledger>,
    reads: Reads,
    /// Set just before the SIGKILL: writer errors from then on are the kill's.
    killed: AtomicBool,
}

/// One writer: creates and updates (of its seeded slice and its own records) until `stop`.
async fn writer(
    shared: Arc<Shared>,
    mut c: Client,
    w: usize,
    mut own: Vec<String>,
    stop: Arc<AtomicBool>,
) {
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let create = k % 2 == 1 || own.is_empty();
        if create {
            let tag = format!(
                "w{}x{}x{}",
                letters(w as u64),
                letters(k),
                letters(u64::from(rand::thread_rng().r#gen::<u32>()))
            );
            let result = c
                .records
                .create_record(pb::CreateRecordRequest {
                    collection: "customers".into(),
                    fields: customer(&tag),
                    honeytoken: false,
                })
                .await;
            let mut ledger = shared.ledger.lock().unwrap();
            match result {
                Ok(r) => {
                    let id = r.into_inner().id;
                    ledger
                        .acked
                        .insert(id.clone(), format!("ada.{tag}@example.com"));
                    ledger.created.insert(id.clone(), w);
                    ledger.writes += 1;
                    own.push(id);
                }
                Err(_) if shared.killed.load(Ordering::SeqCst) => {
                    ledger.uncertain_creates += 1;
                    return;
                }
                Err(s) => ledger
                    .errors
                    .push(format!("create: {:?} {}", s.code(), s.message())),
            }
        } else {
            let id = own[rand::thread_rng().gen_range(0..own.len())].clone();
            let email = format!("upd.w{w}.{k}@example.com");
            let result = c
                .records
                .update_record(pb::UpdateRecordRequest {
                    id: id.clone(),
                    set: vec![field("email", &email)],
                    clear: vec![],
                    expected_version: None,
                })
                .await;
            let mut ledger = shared.ledger.lock().unwrap();
            match result {
                Ok(_) => {
                    ledger.acked.insert(id, email);
                    ledger.writes += 1;
                }
                Err(_) if shared.killed.load(Ordering::SeqCst) => {
                    ledger.uncertain.insert(id, email);
                    return;
                }
                Err(s) => {
                    ledger
                        .errors
                        .push(format!("update {id}: {:?} {}", s.code(), s.message()))
                }
            }
        }
    }
}

/// One reader: gets of seeded ids (checking the value), gets of shredded ids (NOT_FOUND), and a
/// shred of one of its own ids every 50 reads, until `stop` and at least `min_reads` verified
/// reads of seeded ids (shreds and NOT_FOUND reads do not count: the test asserts on these).
async fn reader(
    shared: Arc<Shared>,
    mut c: Client,
    mut to_shred: Vec<String>,
    stop: Arc<AtomicBool>,
    min_reads: u64,
) {
    let (mut done, mut verified) = (0u64, 0u64);
    while !(stop.load(Ordering::Relaxed) && verified >= min_reads) {
        done += 1;
        if done.is_multiple_of(50)
            && let Some(victim) = to_shred.pop()
        {
            shared.shredded.lock().unwrap().insert(victim.clone());
            match c
                .records
                .delete_record(pb::DeleteRecordRequest {
                    id: victim.clone(),
                    wait_for_purge: false,
                })
                .await
            {
                Ok(_) => {
                    shared.shred_acked.lock().unwrap().insert(victim);
                }
                Err(s) => shared.reads.errors.lock().unwrap().push(format!(
                    "shred {victim}: {:?} {}",
                    s.code(),
                    s.message()
                )),
            }
            continue;
        }
        let shredded: Option<String> = if done.is_multiple_of(7) {
            // Only acknowledged shreds: a read may see the record until its shred commits.
            let set = shared.shred_acked.lock().unwrap();
            let n = set.len();
            (n > 0)
                .then(|| set.iter().nth(rand::thread_rng().gen_range(0..n)).cloned())
                .flatten()
        } else {
            None
        };
        let (id, want) = match shredded {
            Some(id) => (id, None),
            None => {
                let (i, id) = &shared.pool[rand::thread_rng().gen_range(0..shared.pool.len())];
                (id.clone(), Some(seed_email(*i)))
            }
        };
        match (get(&mut c, &id, "support").await, want) {
            (Ok(resp), Some(want)) if email_of(&resp) == want => {
                verified += 1;
                shared.reads.ok.fetch_add(1, Ordering::Relaxed);
            }
            (Ok(resp), want) => shared.reads.errors.lock().unwrap().push(format!(
                "read {id}: email {:?}, wanted {want:?}",
                email_of(&resp)
            )),
            (Err(s), None) if s.code() == Code::NotFound => {
                shared
                    .reads
                    .not_found_shredded
                    .fetch_add(1, Ordering::Relaxed);
            }
            (Err(s), _) => shared.reads.errors.lock().unwrap().push(format!(
                "read {id}: {:?} {}",
                s.code(),
                s.message()
            )),
        }
    }
}

type Tasks = Vec<tokio::task::JoinHandle<()>>;

/// Starts the writers and readers against `vault`; `owned[w]` are writer w's records.
async fn start_load(
    shared: &Arc<Shared>,
    vault: &ChildVault,
    token: &str,
    owned: &[Vec<String>],
    to_shred: &[Vec<String>],
    (stop_writers, stop_readers): (&Arc<AtomicBool>, &Arc<AtomicBool>),
    min_reads: u64,
) -> (Tasks, Tasks) {
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for (w, own) in owned.iter().enumerate() {
        let c = connect(vault, token).await;
        writers.push(tokio::spawn(writer(
            shared.clone(),
            c,
            w,
            own.clone(),
            stop_writers.clone(),
        )));
    }
    for mine in to_shred {
        let c = connect(vault, token).await;
        readers.push(tokio::spawn(reader(
            shared.clone(),
            c,
            mine.clone(),
            stop_readers.clone(),
            min_reads,
        )));
    }
    (writers, readers)
}

async fn join(tasks: Tasks) {
    for t in tasks {
        t.await.unwrap();
    }
}

/// Reads every id of `want` (id -> email, or `None` for NOT_FOUND) from 32 tasks; the
/// mismatches.
async fn check_all(c: &Client, want: BTreeMap<String, Option<Vec<String>>>) -> Vec<String> {
    let want: Arc<Vec<(String, Option<Vec<String>>)>> = Arc::new(want.into_iter().collect());
    let next = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (mut c, want, next, bad) = (c.clone(), want.clone(), next.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap();
                let Some((id, expected)) = want.get(i) else {
                    return;
                };
                let got = get(&mut c, id, "support").await;
                let fine = match (&got, expected) {
                    (Ok(resp), Some(emails)) => emails.contains(&email_of(resp)),
                    (Err(s), None) => s.code() == Code::NotFound,
                    _ => false,
                };
                if !fine {
                    bad.lock().unwrap().push(format!(
                        "{id}: got {:?}, wanted {expected:?}",
                        got.map(|r| email_of(&r)).map_err(|s| s.code())
                    ));
                }
            }
        }));
    }
    join(tasks).await;
    Arc::try_unwrap(bad).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_survives_a_kill_and_finishes_by_itself() {
    let n = keys_wanted();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keyring = dir.path().join("keys").join("keyring");
    let config = dir.path().join("strongroom.toml");
    // About 8 s of rewrapping for the seeded keys, so that the kill lands mid-rotation.
    std::fs::write(
        &config,
        format!("rewrap_per_second = {}\n", (n / 8).max(256)),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let args = ["--config", config.as_str()];
    let mut vault = ChildVault::start_with(&data, &args, &[]);
    let token = vault.token.clone().unwrap();

    let ids = seed(&vault, &token, n).await;
    let mut admin = connect(&vault, &token).await;
    let before = status(&mut admin).await;
    assert_eq!(before.epochs.len(), 1, "{before:?}");
    assert_eq!(before.epochs[0].keys, n as u64, "{before:?}");
    let old_epoch = before.epochs[0].id;
    let old_hex = epoch_hex(&keyring, old_epoch).expect("the keyring holds the first epoch");

    // Who owns what: each writer a slice of the seeded records, each reader a few to shred;
    // the readers read the rest, whose values nobody changes.
    let slice = (n / 40).clamp(10, 500);
    let owned: Vec<Vec<String>> = (0..WRITERS)
        .map(|w| ids[w * slice..(w + 1) * slice].to_vec())
        .collect();
    let base = WRITERS * slice;
    let to_shred: Vec<Vec<String>> = (0..READERS)
        .map(|r| ids[base + r * SHREDS_PER_READER..base + (r + 1) * SHREDS_PER_READER].to_vec())
        .collect();
    let pool_start = base + READERS * SHREDS_PER_READER;
    let shared = Arc::new(Shared {
        pool: ids
            .iter()
            .enumerate()
            .skip(pool_start)
            .map(|(i, id)| (i, id.clone()))
            .collect(),
        shredded: Mutex::default(),
        shred_acked: Mutex::default(),
        ledger: Mutex::default(),
        reads: Reads::default(),
        killed: AtomicBool::new(false),
    });

    // Load, then the rotation under it; kill -9 once a quarter of the keys moved.
    let (stop_writers, stop_readers) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (writers, readers) = start_load(
        &shared,
        &vault,
        &token,
        &owned,
        &to_shred,
        (&stop_writers, &stop_readers),
        100,
    )
    .await;
    let started = admin
        .keys
        .rotate_keys(pb::RotateKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let new_epoch = started.epochs.last().unwrap().id;
    assert!(new_epoch > old_epoch, "{started:?}");
    let mut polls = 0u64;
    let at_kill = loop {
        polls += 1;
        let st = status(&mut admin).await;
        let reads = shared.reads.ok.load(Ordering::Relaxed);
        if st.rewrapped >= n as u64 / 4 || !st.rotating {
            break st;
        }
        assert!(
            polls < 100_000,
            "the rotation does not progress: {st:?}, {reads} reads"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        at_kill.rotating && at_kill.keys_under_older_epochs > 0,
        "the rotation ended before the kill (rate limit too high?): {at_kill:?}"
    );
    // The readers stop first (their calls would all fail once the vault is gone); the writers
    // are in flight when the vault dies.
    stop_readers.store(true, Ordering::SeqCst);
    join(readers).await;
    let reads_before_kill = shared.reads.ok.load(Ordering::Relaxed);
    shared.killed.store(true, Ordering::SeqCst);
    vault.kill();
    stop_writers.store(true, Ordering::SeqCst);
    join(writers).await;
    // Killed mid-rotation: the keyring still holds both epochs.
    assert!(epoch_hex(&keyring, old_epoch).is_some());
    assert!(epoch_hex(&keyring, new_epoch).is_some());

    // Restart: the rotation is taken up where it stopped.
    let mut vault = ChildVault::start_with(&data, &args, &[]);
    let mut admin = connect(&vault, &token).await;
    let resumed = status(&mut admin).await;
    assert!(
        resumed.rotating && resumed.keys_under_older_epochs > 0,
        "{resumed:?}"
    );

    // Every write acknowledged before the kill is there; the one in flight has either value.
    let mut want: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
    {
        let ledger = shared.ledger.lock().unwrap();
        assert!(
            ledger.errors.is_empty(),
            "writes failed: {:?}",
            ledger.errors
        );
        assert!(
            ledger.writes > 0,
            "no write was acknowledged before the kill"
        );
        for (id, email) in &ledger.acked {
            let mut emails = vec![email.clone()];
            emails.extend(ledger.uncertain.get(id).cloned());
            want.insert(id.clone(), Some(emails));
        }
        for (id, email) in &ledger.uncertain {
            // An update in flight to a seeded record no acknowledged write changed.
            want.entry(id.clone()).or_insert_with(|| {
                let i = ids.iter().position(|x| x == id).unwrap();
                Some(vec![seed_email(i), email.clone()])
            });
        }
    }
    let in_flight_at_kill = {
        let ledger = shared.ledger.lock().unwrap();
        ledger.uncertain.len() as u64 + ledger.uncertain_creates
    };
    let lost = check_all(&admin, want).await;
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // From here on the value read back is the one to expect.
    {
        let uncertain = {
            let mut ledger = shared.ledger.lock().unwrap();
            let uncertain = std::mem::take(&mut ledger.uncertain);
            for id in uncertain.keys() {
                ledger.acked.remove(id);
            }
            uncertain
        };
        for id in uncertain.keys() {
            let email = email_of(&get(&mut admin, id, "support").await.unwrap());
            shared
                .ledger
                .lock()
                .unwrap()
                .acked
                .insert(id.clone(), email);
        }
    }

    // The same load while the restarted vault finishes the rotation by itself.
    let owned_now: Vec<Vec<String>> = {
        let ledger = shared.ledger.lock().unwrap();
        (0..WRITERS)
            .map(|w| {
                let mut own = owned[w].clone();
                own.extend(
                    ledger
                        .created
                        .iter()
                        .filter(|&(_, &by)| by == w)
                        .map(|(id, _)| id.clone()),
                );
                own
            })
            .collect()
    };
    let to_shred_now: Vec<Vec<String>> = {
        let shredded = shared.shredded.lock().unwrap();
        to_shred
            .iter()
            .map(|mine| {
                mine.iter()
                    .filter(|id| !shredded.contains(*id))
                    .cloned()
                    .collect()
            })
            .collect()
    };
    let (stop_writers, stop_readers) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    shared.killed.store(false, Ordering::SeqCst);
    let (writers, readers) = start_load(
        &shared,
        &vault,
        &token,
        &owned_now,
        &to_shred_now,
        (&stop_writers, &stop_readers),
        100,
    )
    .await;
    let mut polls = 0u64;
    let done = loop {
        polls += 1;
        let st = status(&mut admin).await;
        if !st.rotating {
            break st;
        }
        assert!(polls < 100_000, "the resumed rotation does not end: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop_writers.store(true, Ordering::SeqCst);
    stop_readers.store(true, Ordering::SeqCst);
    join(writers).await;
    join(readers).await;

    // Reads: none failed, but NOT_FOUND of ids the test shredded.
    let read_errors = shared.reads.errors.lock().unwrap().clone();
    assert!(
        read_errors.is_empty(),
        "{} read errors: {:?}",
        read_errors.len(),
        &read_errors[..read_errors.len().min(10)]
    );
    let reads = shared.reads.ok.load(Ordering::Relaxed);
    assert!(reads_before_kill >= 100 * READERS as u64 && reads > reads_before_kill);

    // Every key on the new epoch: one epoch, no key left under an older one, as many keys as
    // live records (the creates in flight at the kill may or may not have made one).
    let ledger = std::mem::take(&mut *shared.ledger.lock().unwrap());
    assert!(
        ledger.errors.is_empty(),
        "writes failed: {:?}",
        ledger.errors
    );
    let shred_acked = shared.shred_acked.lock().unwrap().clone();
    assert_eq!(shred_acked.len(), READERS * SHREDS_PER_READER);
    let live = (n - shred_acked.len() + ledger.created.len()) as u64;
    assert_eq!(done.epochs.len(), 1, "{done:?}");
    let end = status(&mut admin).await;
    assert_eq!(end.epochs.len(), 1, "{end:?}");
    assert_eq!(end.epochs[0].id, new_epoch, "{end:?}");
    assert_eq!(end.keys_under_older_epochs, 0, "{end:?}");
    assert!(
        (live..=live + ledger.uncertain_creates).contains(&end.epochs[0].keys),
        "{} keys for {live} live records (+ {} creates in flight at the kill): {end:?}",
        end.epochs[0].keys,
        ledger.uncertain_creates
    );

    // Every record reads back as it should: acknowledged writes, untouched seeds, shreds gone.
    let mut want: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        want.insert(id.clone(), Some(vec![seed_email(i)]));
    }
    for (id, email) in &ledger.acked {
        want.insert(id.clone(), Some(vec![email.clone()]));
    }
    for id in &shred_acked {
        want.insert(id.clone(), None);
    }
    let bad = check_all(&admin, want).await;
    assert!(
        bad.is_empty(),
        "{} records read back wrong: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );

    // The old epoch is gone from the keyring file, its key bytes included.
    let bytes = std::fs::read(&keyring).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(&format!("epoch {old_epoch} ")), "{text}");
    assert!(!text.contains(&old_hex));
    assert!(epoch_hex(&keyring, new_epoch).is_some());

    // The audit log verifies and tells the rotation: started, the old epoch destroyed, ended.
    let auditor_token = admin
        .tokens
        .create_token(pb::CreateTokenRequest {
            subject: "svc:rotation-auditor".into(),
            roles: vec!["role:auditor".into()],
            ..pb::CreateTokenRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut auditor = connect(&vault, &auditor_token).await;
    let verified = auditor
        .audit
        .verify_log(pb::VerifyLogRequest {
            from_seq: None,
            to_seq: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    let ok = |events: &[pb::AuditEvent], needle: &str| {
        events
            .iter()
            .filter(|e| e.result == "OK" && e.detail.contains(needle))
            .count()
    };
    let started = events_of(&mut auditor, "Keys/RotateKeys").await;
    assert_eq!(ok(&started, "rotation started"), 1, "{started:?}");
    let destroyed = events_of(&mut auditor, "Keys/DestroyEpoch").await;
    assert_eq!(
        ok(&destroyed, &format!("epoch {old_epoch} destroyed")),
        1,
        "{destroyed:?}"
    );
    let ended = events_of(&mut auditor, "Keys/Rotate").await;
    assert_eq!(
        ok(&ended, &format!("rotation to epoch {new_epoch} completed")),
        1,
        "{ended:?}"
    );
    eprintln!(
        "rotation under load: {n} seeded keys; {} acknowledged writes ({} in flight at the kill); \
         {reads} reads ({reads_before_kill} before the kill), {} NOT_FOUND of shredded ids; \
         {} shreds; killed with {} of {n} keys rewrapped",
        ledger.writes,
        in_flight_at_kill,
        shared.reads.not_found_shredded.load(Ordering::Relaxed),
        shred_acked.len(),
        at_kill.rewrapped,
    );
    vault.kill();
}
