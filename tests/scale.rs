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
    let over = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("data")),
        keys_dir: None,
        policies_dir: Some(policies_dir()),
        store_url: None,
    };
    server::start(Config::from_toml(&toml, over).unwrap())
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
    let report = admin
        .audit
        .verify_log(pb::VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
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
