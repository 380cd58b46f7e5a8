//! The vault on PostgreSQL as a deployment runs it (issue 14): a cluster of a primary and two
//! synchronous standbys started by `scripts/pg-cluster.sh`, and vault servers on 127.0.0.1:0
//! over it. Each test starts a cluster of its own (in about two seconds), because it kills and
//! promotes nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use strongroom::{
    api::pb,
    config::{Config, Overrides},
    server,
    storage::Store,
};
use tonic::Code;

use support::{customer, policies_dir};

/// A cluster of its own, stopped and removed when dropped.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn script(&self, args: &[&str]) -> String {
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster.sh"))
            .args(args)
            .env("PG_CLUSTER_DIR", &self.dir)
            .env("PG_CLUSTER_PORT", self.port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts on three free loopback ports in a row.
    fn start() -> Self {
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        let mut port = 56_000 + u16::try_from(std::process::id() % 300).unwrap() * 10;
        while !(free(port) && free(port + 1) && free(port + 2)) {
            port += 3;
        }
        // Not in a private temp dir: the postgres user must reach it.
        let dir = std::env::temp_dir().join(format!(
            "strongroom-scale-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let cluster = Self { dir, port };
        cluster.script(&["start"]);
        cluster
    }

    fn url(&self, db: &str) -> String {
        self.script(&["url", db])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-cluster.sh"))
            .arg("stop")
            .env("PG_CLUSTER_DIR", &self.dir)
            .env("PG_CLUSTER_PORT", self.port.to_string())
            .output();
    }
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A vault node over the cluster, with its own data and keys dirs under `dir` (the keyring
/// file is shared by copying `dir/keys` before the second node starts).
async fn node(cluster: &Cluster, dir: &Path) -> server::Running {
    let toml = format!(
        "[postgres]\nurl = {:?}\nkeys_url = {:?}\npool_size = 8\n",
        cluster.url("strongroom"),
        cluster.url("strongroom_keys")
    );
    start_node(&toml, dir.join("data"), None).await
}

/// A vault node started with config `toml`, on loopback, its data in `data` and its keys in
/// `keys` (by default next to the data).
async fn start_node(toml: &str, data: PathBuf, keys: Option<PathBuf>) -> server::Running {
    let over = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data),
        keys_dir: keys,
        policies_dir: Some(policies_dir()),
        store_url: None,
    };
    server::start(Config::from_toml(toml, over).unwrap())
        .await
        .unwrap()
}

/// Kill -9 the primary under writes, promote a standby: every acknowledged write is there,
/// the audit chain verifies, and the time from the kill to the first acknowledged write after
/// it is printed (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_loses_no_acknowledged_write() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut running = node(&cluster, dir.path()).await;
    let token = running.first_admin_token.take().unwrap().to_string();
    let addr = format!("http://{}", running.addr);

    // Each acknowledged write: its record id and when its request was sent.
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // When the primary was killed (far ahead until then), and when the first write sent after
    // it was acknowledged.
    let killed_at = Arc::new(Mutex::new(Instant::now() + Duration::from_secs(86_400)));
    let first_after: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4_u64 {
        let (acked, stop, addr, token) = (acked.clone(), stop.clone(), addr.clone(), token.clone());
        let (killed_at, first_after) = (killed_at.clone(), first_after.clone());
        writers.push(tokio::spawn(async move {
            let mut client = strongroom::client::connect(&addr, &token).await.unwrap();
            let mut failures = 0_u64;
            let mut n = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let tag = format!("w{}n{}", support::letters(w), support::letters(n));
                let sent = Instant::now();
                let result = client
                    .records
                    .create_record(pb::CreateRecordRequest {
                        collection: "customers".into(),
                        fields: customer(&tag),
                        ..Default::default()
                    })
                    .await;
                match result {
                    Ok(r) => {
                        let id = r.into_inner().id;
                        acked.lock().unwrap().push((id, sent));
                        if first_after.lock().unwrap().is_none()
                            && sent > *killed_at.lock().unwrap()
                        {
                            *first_after.lock().unwrap() = Some(Instant::now());
                        }
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            failures
        }));
    }
    let count = || acked.lock().unwrap().len();
    let waited = Instant::now();
    while count() < 40 {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no writes before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The script returns once the postmaster is gone; a write sent after that cannot commit on
    // r1.
    cluster.script(&["kill", "r1"]);
    *killed_at.lock().unwrap() = Instant::now();
    let killed_at = *killed_at.lock().unwrap();
    let promoted = cluster.script(&["promote"]);
    assert!(promoted == "r2" || promoted == "r3", "{promoted}");
    let waited = Instant::now();
    while acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at > killed_at)
        .count()
        < 40
    {
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "no write was acknowledged after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failures = 0;
    for w in writers {
        failures += w.await.unwrap();
    }
    let first = first_after
        .lock()
        .unwrap()
        .expect("a write sent after the kill was acknowledged");
    println!(
        "failover: primary killed to first acknowledged write {} ms ({} writes refused meanwhile, {} acknowledged in all; promoted {promoted})",
        first.duration_since(killed_at).as_millis(),
        failures,
        count()
    );

    // Every acknowledged write reads back, through this node and through a node started now.
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let ids: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    for id in &ids {
        let got = support::get(&mut admin, id, "support").await;
        assert!(got.is_ok(), "acknowledged record {id} is missing: {got:?}");
    }
    let report = support::verified(&mut admin).await;
    assert!(
        report.ok,
        "the audit chain after the failover: {}",
        report.problem
    );
    assert!(report.checked >= u64::try_from(ids.len()).unwrap());
    assert_eq!(
        support::get(&mut admin, "0123456789abcdef0123456789abcdef", "support")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    running.shutdown().await.unwrap();
}

/// A `keys_url` that spells the data database's address another way passes the config check;
/// the stores' role marks catch it at the start, before anything is written to either.
#[tokio::test]
async fn a_key_store_url_naming_the_data_database_another_way_is_refused() {
    let url = std::env::var("STRONGROOM_TEST_PG").expect("STRONGROOM_TEST_PG: run `make test`");
    let spelled = url.replacen("127.0.0.1:", "localhost:", 1);
    assert_ne!(url, spelled);
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("roles_{}", rand_suffix());
    let toml = format!(
        "[postgres]\nurl = {url:?}\nkeys_url = {spelled:?}\nschema = {schema:?}\npool_size = 2\n"
    );
    let over = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().join("data")),
        keys_dir: None,
        policies_dir: Some(policies_dir()),
        store_url: None,
    };
    let err = server::start(Config::from_toml(&toml, over).unwrap())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("the key store is the data store"), "{err}");
}

/// A node on the shared test cluster (`make test` starts it), in schema `schema`, with its own
/// data dir and the keys dir `keys` (shared by the nodes: the keyring file is one).
async fn shared_node(schema: &str, data: &Path, keys: &Path) -> server::Running {
    let url = std::env::var("STRONGROOM_TEST_PG").expect("STRONGROOM_TEST_PG: run `make test`");
    let keys_url =
        std::env::var("STRONGROOM_TEST_PG_KEYS").expect("STRONGROOM_TEST_PG_KEYS: run `make test`");
    // Over TLS to the database, verified against the cluster's CA (the vault's other
    // PostgreSQL runs, `STRONGROOM_TEST_STORE=postgres`, connect in plaintext).
    let ca_file =
        std::env::var("STRONGROOM_TEST_PG_CA").expect("STRONGROOM_TEST_PG_CA: run `make test`");
    let toml = format!(
        "[postgres]\nurl = {url:?}\nkeys_url = {keys_url:?}\nschema = {schema:?}\npool_size = 4\n\
         ca_file = {ca_file:?}\n"
    );
    start_node(&toml, data.to_path_buf(), Some(keys.to_path_buf())).await
}

/// Two vault nodes on a fresh schema of the shared cluster, one keys dir, an admin client on
/// each.
struct Pair {
    _dir: tempfile::TempDir,
    keys: PathBuf,
    schema: String,
    a: server::Running,
    b: server::Running,
    addr_a: String,
    addr_b: String,
    admin_a: strongroom::client::Client,
    admin_b: strongroom::client::Client,
}

impl Pair {
    async fn start(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let schema = format!("{name}_{}", rand_suffix());
        let a = shared_node(&schema, &dir.path().join("a"), &keys).await;
        let b = shared_node(&schema, &dir.path().join("b"), &keys).await;
        let admin_token = a.first_admin_token.clone().unwrap().to_string();
        let (addr_a, addr_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
        let admin_a = strongroom::client::connect(&addr_a, &admin_token)
            .await
            .unwrap();
        let admin_b = strongroom::client::connect(&addr_b, &admin_token)
            .await
            .unwrap();
        Self {
            _dir: dir,
            keys,
            schema,
            a,
            b,
            addr_a,
            addr_b,
            admin_a,
            admin_b,
        }
    }

    /// Checks that the audit chain both nodes wrote verifies from either, and stops them.
    async fn verify_and_stop(self) {
        for mut admin in [self.admin_a, self.admin_b] {
            let report = support::verified(&mut admin).await;
            assert!(report.ok, "the chain two nodes wrote: {}", report.problem);
        }
        self.a.shutdown().await.unwrap();
        self.b.shutdown().await.unwrap();
    }
}

/// How long a change made on one node may take to be acted on by another in these tests: a
/// bound on liveness, not the promise. The promise (within 1 s: a poll every 250 ms, then the
/// reload) is timed by `strongroom bench --store ... --nodes 2` on a release build, because
/// this machine is shared and a debug build here can take longer under load.
const ACTED_ON: Duration = Duration::from_secs(10);

/// Polls `check` until it holds, at most `limit`; prints how long that took.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not seen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{what}: after {} ms", start.elapsed().as_millis());
}

/// Whether `client` (support) reads the name of record `id` in plaintext.
async fn name_shown(client: &strongroom::client::Client, id: &str) -> bool {
    let Ok(got) = support::get(&mut client.clone(), id, "support").await else {
        return false;
    };
    support::view(&got)
        .into_iter()
        .any(|(name, d, _)| name == "name" && d == pb::Disclosure::Plain)
}

/// Two vault nodes on one database: a token issued or revoked, a policy version applied and a
/// key epoch rotated on one are acted on by the other (the time is printed); concurrent updates of
/// one record through both lose none; and the audit chain the two wrote verifies as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_tokens_policy_keys_records_and_one_audit_chain() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let schema = format!("nodes_{}", rand_suffix());
    let a = shared_node(&schema, &dir.path().join("a"), &keys).await;
    let b = shared_node(&schema, &dir.path().join("b"), &keys).await;
    assert!(
        b.first_admin_token.is_none(),
        "the second node found the first's admin"
    );
    let admin_token = a.first_admin_token.clone().unwrap().to_string();
    let (addr_a, addr_b) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let connect = |addr: &str, token: &str| {
        let (addr, token) = (addr.to_owned(), token.to_owned());
        async move { strongroom::client::connect(&addr, &token).await.unwrap() }
    };
    let mut admin_a = connect(&addr_a, &admin_token).await;
    let mut admin_b = connect(&addr_b, &admin_token).await;

    // A token issued on A works on B.
    let issued = support::issue_token(&admin_a, "svc:helpdesk", &["role:support"]).await;
    let id = support::create(&mut admin_a, customer("shared")).await;
    let support_b = connect(&addr_b, &issued).await;
    within(ACTED_ON, "a token issued on A, on B", || {
        name_shown(&support_b, &id)
    })
    .await;

    // A policy version applied on A decides on B: support no longer reads names.
    let default_policy = std::fs::read_to_string(policies_dir().join("policy.csv")).unwrap();
    let text = default_policy.replace(
        "p, role:support, customers.name, read, support, allow\n",
        "",
    );
    let applied = admin_a
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text,
            comment: "names withheld from support".into(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    let applied = applied.version.expect("applied at once").version;
    within(ACTED_ON, "a policy applied on A, on B", || async {
        !name_shown(&support_b, &id).await
    })
    .await;
    // The version numbers are one sequence: B applies the next, after A's.
    let back = admin_b
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text: default_policy.clone(),
            comment: "names back".into(),
            expected_version: Some(applied),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.version.map(|v| v.version), Some(applied + 1));

    // A token revoked on A is refused on B.
    admin_a
        .tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            subject: "svc:helpdesk".into(),
        })
        .await
        .unwrap();
    within(ACTED_ON, "a token revoked on A, on B", || {
        let mut c = support_b.clone();
        let id = id.clone();
        async move {
            support::get(&mut c, &id, "support")
                .await
                .is_err_and(|s| s.code() == Code::Unauthenticated)
        }
    })
    .await;

    // A rotation on A: B reads a record written under the new epoch, and every record after
    // the old epoch is destroyed.
    admin_a
        .keys
        .rotate_keys(pb::RotateKeysRequest {})
        .await
        .unwrap();
    let after = support::create(&mut admin_a, customer("rotated")).await;
    within(ACTED_ON, "the new epoch, on B", || {
        let mut c = admin_b.clone();
        let after = after.clone();
        async move { support::get(&mut c, &after, "support").await.is_ok() }
    })
    .await;
    within(Duration::from_secs(30), "the rotation's end", || {
        let mut c = admin_a.clone();
        async move {
            !c.keys
                .get_key_status(pb::GetKeyStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .rotating
        }
    })
    .await;
    for record in [&id, &after] {
        support::get(&mut admin_b, record, "support")
            .await
            .unwrap_or_else(|e| panic!("{record} after the rotation, on B: {e:?}"));
    }

    // Read-modify-write through both nodes at once: each update names the version it read;
    // one that lost is refused (ABORTED) and tried again. None is lost.
    let per_node = 15_u64;
    let mut writers = Vec::new();
    for (n, addr) in [addr_a.clone(), addr_b.clone()].into_iter().enumerate() {
        let (token, id) = (admin_token.clone(), id.clone());
        writers.push(tokio::spawn(async move {
            let mut c = strongroom::client::connect(&addr, &token).await.unwrap();
            let mut aborted = 0_u64;
            for i in 0..per_node {
                loop {
                    let got = support::get(&mut c, &id, "support").await.unwrap();
                    let update = c
                        .records
                        .update_record(pb::UpdateRecordRequest {
                            id: id.clone(),
                            set: vec![support::field(
                                "notes",
                                &format!(
                                    "node {} write {}",
                                    support::letters(n as u64),
                                    support::letters(i)
                                ),
                            )],
                            clear: vec![],
                            expected_version: Some(got.version),
                        })
                        .await;
                    match update {
                        Ok(_) => break,
                        Err(s) if s.code() == Code::Aborted => aborted += 1,
                        Err(s) => panic!("update through node {n}: {s:?}"),
                    }
                }
            }
            aborted
        }));
    }
    let mut aborted = 0;
    for w in writers {
        aborted += w.await.unwrap();
    }
    let record = support::get(&mut admin_b, &id, "support").await.unwrap();
    let events: Vec<_> = support::events_of(&mut admin_a, "Records/UpdateRecord")
        .await
        .into_iter()
        .filter(|e| e.record_id == id && e.result == "OK")
        .collect();
    let updates = events.len();
    // Each event names the version its update wrote (one that skipped a version held by
    // another writer's key says so): distinct, the last the record's.
    let mut written: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            e.detail
                .split("-> ")
                .nth(1)?
                .split(';')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    written.sort_unstable();
    written.dedup();
    assert_eq!(written.len(), updates, "{events:?}");
    assert_eq!(written.last(), Some(&record.version));
    println!(
        "{} updates through two nodes: {aborted} refused as stale and retried; version {}",
        2 * per_node,
        record.version
    );
    assert_eq!(
        updates as u64,
        2 * per_node,
        "an acknowledged update has no event"
    );
    assert!(
        record.version > 2 * per_node,
        "version {} after {} acknowledged updates: one was lost",
        record.version,
        2 * per_node
    );

    // One chain: both nodes wrote to it, and it verifies end to end from either.
    for admin in [&mut admin_a, &mut admin_b] {
        let report = support::verified(admin).await;
        assert!(report.ok, "the chain two nodes wrote: {}", report.problem);
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A token revoked on node B while node A rotates it must stay revoked once the revocation
/// was acknowledged: whichever commits second was decided on the subject's tokens as the other
/// found them, so it is decided again on what is stored then (the rotation then names a token
/// that no longer exists). Rounds with the rotation sent 0 to 250 ms after the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_on_one_node_never_brings_back_a_token_revoked_on_another() {
    let pair = Pair::start("revoke").await;
    let (addr_a, addr_b) = (pair.addr_a.clone(), pair.addr_b.clone());
    let (admin_a, admin_b) = (pair.admin_a.clone(), pair.admin_b.clone());
    let id = support::create(&mut admin_a.clone(), customer("revoked")).await;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..8_u64 {
        let subject = format!("svc:desk-{}", support::letters(round));
        let token = support::issue_token(&admin_a, &subject, &["role:support"]).await;
        let token_id = token_id(&admin_a, &subject).await;
        let on_b = strongroom::client::connect(&addr_b, &token).await.unwrap();
        within(ACTED_ON, "a token issued on A, on B", || {
            name_shown(&on_b, &id)
        })
        .await;

        let mut tokens_b = admin_b.tokens.clone();
        let revoke = tokens_b.revoke_tokens(pb::RevokeTokensRequest {
            subject: subject.clone(),
        });
        let mut tokens_a = admin_a.tokens.clone();
        let rotate = async move {
            tokio::time::sleep(Duration::from_millis(round * 35)).await;
            tokens_a
                .rotate_token(pb::RotateTokenRequest {
                    id: token_id,
                    grace: "1h".into(),
                })
                .await
        };
        let (revoked, rotated) = tokio::join!(revoke, rotate);
        let code = |r: Result<(), tonic::Status>| {
            r.map_or_else(|s| format!("{:?}", s.code()), |()| "Ok".into())
        };
        *outcomes
            .entry(format!(
                "revoke {}, rotate {}",
                code(revoked.as_ref().map(drop).map_err(Clone::clone)),
                code(rotated.as_ref().map(drop).map_err(Clone::clone))
            ))
            .or_default() += 1;
        // A revocation decided on tokens A changed meanwhile is decided again, never refused.
        assert!(
            revoked.is_ok(),
            "round {round}: a revocation on B racing a rotation on A: {revoked:?}"
        );
        // Past both nodes' polls: every token of the subject is refused everywhere.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut tokens = vec![token];
        tokens.extend(rotated.ok().map(|r| r.into_inner().token));
        for (token, addr) in tokens.iter().flat_map(|t| [(t, &addr_a), (t, &addr_b)]) {
            let mut c = strongroom::client::connect(addr, token).await.unwrap();
            let got = support::get(&mut c, &id, "support").await;
            assert!(
                got.as_ref()
                    .is_err_and(|s| s.code() == Code::Unauthenticated),
                "round {round}: a token of the subject revoked on B works on {addr}: {got:?}"
            );
        }
    }
    println!("a revocation on B racing a rotation on A: {outcomes:?}");
    pair.verify_and_stop().await;
}

/// A node started while another creates and updates records: its start-up check of the key
/// store against the data reads the keys, then the headers, so a record written in between
/// has a header whose key it did not see. It reads such a record again (header, then keys)
/// instead of refusing to start ("records ... have no data key"), which it did before. Six
/// writers: the start's table creation used to take a lock that stalled them (updates timed
/// out on the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_starts_while_another_writes() {
    let pair = Pair::start("startup").await;
    // Enough records that reading the keys and then the headers takes a while.
    let loaders: Vec<_> = (0..8_u64)
        .map(|l| {
            let mut admin = pair.admin_a.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in 0..150_u64 {
                    ids.push(
                        support::create(&mut admin, customer(&support::letters(l * 1000 + n)))
                            .await,
                    );
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for l in loaders {
        ids.extend(l.await.unwrap());
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..6_u64)
        .map(|w| {
            let (mut admin, stop, id) = (
                pair.admin_a.clone(),
                Arc::clone(&stop),
                ids[w as usize].clone(),
            );
            tokio::spawn(async move {
                let mut written = 0_u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    support::create(&mut admin, customer("busy")).await;
                    let update = admin
                        .records
                        .update_record(pb::UpdateRecordRequest {
                            id: id.clone(),
                            set: vec![support::field(
                                "name",
                                &format!("Name {}", support::letters(written)),
                            )],
                            ..Default::default()
                        })
                        .await;
                    assert!(
                        update.is_ok() || update.as_ref().is_err_and(|s| s.code() == Code::Aborted),
                        "an update while a node starts: {update:?}"
                    );
                    written += 2;
                }
                written
            })
        })
        .collect();
    for start in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let node = shared_node(&pair.schema, dir.path(), &pair.keys).await;
        println!("start {start} of a third node while A writes: OK");
        node.shutdown().await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    println!("A wrote {written} times while a third node started 6 times");
    pair.verify_and_stop().await;
}

/// The id (as `token list` shows it) of `subject`'s only token, through `admin`.
async fn token_id(admin: &strongroom::client::Client, subject: &str) -> String {
    admin
        .tokens
        .clone()
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .find(|t| t.subject == subject)
        .unwrap()
        .id
}

/// Revocations on node B while node A rotates a token in a loop: each is decided again on the
/// tokens as stored when another node changed them meanwhile, so none is refused (before, each
/// was refused ABORTED when A had changed a token since B's last poll, which here is always).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_are_not_starved_by_token_changes_in_a_loop_on_another_node() {
    let pair = Pair::start("starve").await;
    let subjects: Vec<String> = (0..6_u64)
        .map(|n| format!("svc:doomed-{}", support::letters(n)))
        .collect();
    for subject in &subjects {
        support::issue_token(&pair.admin_a, subject, &["role:support"]).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A rotates one token in a loop: a token change every few milliseconds.
    support::issue_token(&pair.admin_a, "svc:churn", &["role:support"]).await;
    let mut churn_id = token_id(&pair.admin_a, "svc:churn").await;
    let rotating = {
        let (admin_a, stop) = (pair.admin_a.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rotated = admin_a
                    .tokens
                    .clone()
                    .rotate_token(pb::RotateTokenRequest {
                        id: churn_id.clone(),
                        grace: "1m".into(),
                    })
                    .await;
                let outcome = match rotated {
                    Ok(r) => {
                        churn_id = r.into_inner().id;
                        "Ok".to_owned()
                    }
                    Err(s) => format!("{:?}", s.code()),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for subject in &subjects {
        let revoked = pair
            .admin_b
            .tokens
            .clone()
            .revoke_tokens(pb::RevokeTokensRequest {
                subject: subject.clone(),
            })
            .await;
        assert!(
            revoked.is_ok(),
            "revoking {subject} on B while A rotates a token: {revoked:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rotated = rotating.await.unwrap();
    println!(
        "{} revocations on B, all OK, while A rotated a token: {rotated:?}",
        subjects.len()
    );
    assert!(
        rotated
            .get("Ok")
            .is_some_and(|n| *n > 2 * subjects.len() as u32),
        "A changed the tokens too rarely for the test to mean anything: {rotated:?}"
    );
    within(ACTED_ON, "the revocations, on A", || {
        let mut c = pair.admin_a.tokens.clone();
        let subjects = subjects.clone();
        async move {
            let listed = c
                .list_tokens(pb::ListTokensRequest {})
                .await
                .unwrap()
                .into_inner()
                .tokens;
            !listed.iter().any(|t| subjects.contains(&t.subject))
        }
    })
    .await;
    pair.verify_and_stop().await;
}

/// A policy version applied on node A that takes `tokens manage` from the admin role, racing
/// a revocation on node B of the only other subject holding it: each was checked against what
/// its node knew of the other, so both used to succeed and nobody could manage tokens again.
/// Now at most one succeeds, and a token holder can still manage tokens. Rounds with the
/// revocation sent 0 to 450 ms after the apply (which compiles the policy before it commits),
/// each on a fresh pair of nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_apply_and_a_revocation_on_two_nodes_never_lock_out_token_management() {
    let default_policy = std::fs::read_to_string(policies_dir().join("policy.csv")).unwrap();
    let admin_line = "p, role:admin, tokens, manage, *, allow\n";
    assert!(default_policy.contains(admin_line));
    let both = format!("{default_policy}\np, role:ops, tokens, manage, *, allow\n");
    let ops_only = both.replace(admin_line, "");
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..4_u64 {
        let pair = Pair::start("lockout").await;
        // Granting role:ops a privilege is an escalation: a second policy admin approves it.
        let proposed = pair
            .admin_a
            .policies
            .clone()
            .apply_policy(pb::ApplyPolicyRequest {
                text: both.clone(),
                comment: "ops manage tokens too".into(),
                expected_version: None,
            })
            .await
            .unwrap()
            .into_inner();
        let pending = proposed
            .pending
            .expect("an escalation waits for approval")
            .id;
        let second =
            support::issue_token(&pair.admin_a, "user:second", &["role:security_admin"]).await;
        let mut second = strongroom::client::connect(&pair.addr_a, &second)
            .await
            .unwrap();
        let approved = second
            .policies
            .approve_policy(pb::ApprovePolicyRequest { id: pending })
            .await
            .unwrap()
            .into_inner();
        assert!(approved.version.is_some(), "round {round}: not applied");
        let ops = support::issue_token(&pair.admin_a, "svc:ops", &["role:ops"]).await;
        let ops_b = strongroom::client::connect(&pair.addr_b, &ops)
            .await
            .unwrap();
        within(ACTED_ON, "the ops token and policy, on B", || {
            let mut c = ops_b.tokens.clone();
            async move { c.list_tokens(pb::ListTokensRequest {}).await.is_ok() }
        })
        .await;

        let mut policies_a = pair.admin_a.policies.clone();
        let apply = policies_a.apply_policy(pb::ApplyPolicyRequest {
            text: ops_only.clone(),
            comment: "only ops manage tokens".into(),
            expected_version: None,
        });
        let mut tokens_b = pair.admin_b.tokens.clone();
        let revoke = async move {
            tokio::time::sleep(Duration::from_millis(round * 150)).await;
            tokens_b
                .revoke_tokens(pb::RevokeTokensRequest {
                    subject: "svc:ops".into(),
                })
                .await
        };
        let (applied, revoked) = tokio::join!(apply, revoke);
        let code = |r: Result<(), tonic::Status>| {
            r.map_or_else(|s| format!("{:?}", s.code()), |()| "Ok".into())
        };
        let (applied_ok, revoked_ok) = (applied.is_ok(), revoked.is_ok());
        // The loser is refused for the race (or by the rule or the policy it lost to), never
        // for anything else, and one of the two succeeds.
        for status in [applied.as_ref().err(), revoked.as_ref().err()]
            .into_iter()
            .flatten()
        {
            assert!(
                matches!(
                    status.code(),
                    Code::Aborted | Code::PermissionDenied | Code::InvalidArgument
                ),
                "round {round}: {status:?}"
            );
        }
        assert!(applied_ok || revoked_ok, "round {round}: both refused");
        *outcomes
            .entry(format!(
                "apply {}, revoke {}",
                code(applied.map(drop)),
                code(revoked.map(drop))
            ))
            .or_default() += 1;
        assert!(
            !(applied_ok && revoked_ok),
            "round {round}: the admin role lost `tokens manage` on A and its last other holder \
             was revoked on B"
        );
        // Past both nodes' polls: someone still manages tokens, on either node.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let admin_token = pair.a.first_admin_token.clone().unwrap().to_string();
        for addr in [&pair.addr_a, &pair.addr_b] {
            let mut managed = false;
            for token in [&admin_token, &ops] {
                let mut c = strongroom::client::connect(addr, token).await.unwrap();
                managed |= c.tokens.list_tokens(pb::ListTokensRequest {}).await.is_ok();
            }
            assert!(managed, "round {round}: nobody manages tokens on {addr}");
        }
        pair.verify_and_stop().await;
    }
    println!("a policy apply on A racing a revocation on B: {outcomes:?}");
}

/// A shred on node A racing updates on node B: once the shred has destroyed the keys it is
/// finished, never answered ABORTED, even when B's update commits in between (with a new
/// version's key written after the keys were destroyed); then the record is gone on both nodes
/// and the key store holds no key of it. B's updates are answered OK, ABORTED (stale) or
/// NOT_FOUND (shredded), never DATA_LOSS. Rounds with the shred sent 0 to 150 ms into the
/// updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shred_racing_updates_on_another_node_finishes_and_leaves_no_key() {
    let pair = Pair::start("shred").await;
    let (admin_a, admin_b) = (pair.admin_a.clone(), pair.admin_b.clone());
    let key_store = strongroom::storage::PgStore::open(&strongroom::storage::PgOptions {
        url: std::env::var("STRONGROOM_TEST_PG_KEYS").unwrap(),
        schema: pair.schema.clone(),
        pool_size: 1,
        ca_file: None,
    })
    .unwrap();
    let mut answers = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..6_u64 {
        let id = support::create(&mut admin_a.clone(), customer("racing")).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let updates = {
            let (mut c, id, stop) = (admin_b.clone(), id.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in 0.. {
                    let update = c
                        .records
                        .update_record(pb::UpdateRecordRequest {
                            id: id.clone(),
                            set: vec![support::field("notes", &support::letters(i))],
                            ..Default::default()
                        })
                        .await;
                    let code = update.map_or_else(|s| s.code(), |_| Code::Ok);
                    codes.push(code);
                    if code == Code::NotFound || stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                }
                codes
            })
        };
        tokio::time::sleep(Duration::from_millis(round * 30)).await;
        let shred = admin_a
            .records
            .clone()
            .delete_record(pb::DeleteRecordRequest {
                id: id.clone(),
                wait_for_purge: false,
            })
            .await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let codes = updates.await.unwrap();
        for code in &codes {
            *answers.entry(format!("update {code:?}")).or_default() += 1;
        }
        assert!(
            shred.is_ok(),
            "round {round}: a shred racing updates on another node: {shred:?}"
        );
        assert!(
            codes
                .iter()
                .all(|c| matches!(c, Code::Ok | Code::Aborted | Code::NotFound)),
            "round {round}: updates racing a shred on another node: {codes:?}"
        );
        for admin in [&admin_a, &admin_b] {
            let got = support::get(&mut admin.clone(), &id, "support").await;
            assert!(
                got.as_ref().is_err_and(|s| s.code() == Code::NotFound),
                "round {round}: the shredded record: {got:?}"
            );
        }
        let left = key_store
            .scan_prefix(strongroom::storage::Keyspace::Deks, &support::id_bytes(&id))
            .unwrap();
        assert!(
            left.is_empty(),
            "round {round}: {} keys of a shredded record",
            left.len()
        );
    }
    println!("a shred on A racing updates on B: {answers:?}");
    pair.verify_and_stop().await;
}
