//! Test support: a real server on 127.0.0.1:0 over a real RocksDB in a temp dir, the generated
//! clients, tokens for each starting role, and raw access to the store while the server is down.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use strongroom::{
    api::pb::{self, records_client::RecordsClient},
    client::{self, Client},
    config::{Config, Overrides},
    domain::Clock,
    server::{self, Running},
    storage::{
        Batch, KeyValue, Keyspace, PgOptions, PgStore, RocksStore, Snapshot, Store, StoreError,
    },
};
use tonic::{Code, transport::Channel};

/// The repository's policies directory.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// Whether the vaults the tests start keep their data on PostgreSQL: `STRONGROOM_TEST_STORE=
/// postgres` (with `STRONGROOM_TEST_PG` and `STRONGROOM_TEST_PG_KEYS` naming the test cluster's
/// two databases, as `scripts/pg-cluster.sh env` prints them). `make test` runs the vault's
/// end-to-end tests on both stores.
pub fn on_postgres() -> bool {
    std::env::var("STRONGROOM_TEST_STORE").as_deref() == Ok("postgres")
}

fn pg_env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run `make test`, or start the test cluster with \
             `eval \"$(scripts/pg-cluster.sh env)\"`"
        )
    })
}

/// The schema of the vault in `dir` on the test cluster: one per vault, the same across its
/// restarts.
fn pg_schema(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("t{}_{:016x}", std::process::id(), h.finish())
}

/// The stores of the vault in `dir` on the test cluster: data, then keys.
pub fn pg_options(dir: &Path) -> (PgOptions, PgOptions) {
    let options = |var| PgOptions {
        url: pg_env(var),
        schema: pg_schema(dir),
        pool_size: 4,
        ca_file: None,
    };
    (
        options("STRONGROOM_TEST_PG"),
        options("STRONGROOM_TEST_PG_KEYS"),
    )
}

/// The config lines that put the vault in `dir` on the test cluster, or none on RocksDB.
pub fn store_config(dir: &Path) -> String {
    if !on_postgres() {
        return String::new();
    }
    let (data, keys) = pg_options(dir);
    format!(
        "\n[postgres]\nurl = {:?}\nkeys_url = {:?}\nschema = {:?}\npool_size = 4\n",
        data.url, keys.url, data.schema
    )
}

/// The data store and the key store of the vault in `dir` (with the server stopped, or shared
/// with it).
pub fn open_stores(dir: &Path) -> (Arc<dyn Store>, Arc<dyn Store>) {
    if on_postgres() {
        let (data, keys) = pg_options(dir);
        (
            Arc::new(PgStore::open(&data).unwrap()),
            Arc::new(PgStore::open(&keys).unwrap()),
        )
    } else {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        (
            Arc::new(RocksStore::open(&data.join("db")).unwrap()),
            Arc::new(RocksStore::open(&dir.join("keys").join(server::KEY_STORE_DIR)).unwrap()),
        )
    }
}

/// A running vault in a temp dir.
pub struct Vault {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub admin_token: String,
    /// The store, shared with the running server (only for vaults from `start_shared`).
    pub shared: Option<Arc<dyn Store>>,
    /// The key store, likewise.
    pub shared_keys: Option<Arc<dyn Store>>,
    /// The server's clock, kept across restarts: a manual one (`start_with_clock`) moves only
    /// when the test advances it.
    pub clock: Clock,
}

impl Vault {
    /// Starts a fresh vault and keeps its first admin token.
    pub async fn start() -> Self {
        Self::start_with_clock(Clock::system()).await
    }

    /// Starts a fresh vault whose server reads time from `clock` (a manual one lets a test move
    /// time, e.g. past a token's expiry, without sleeping), and keeps its first admin token.
    pub async fn start_with_clock(clock: Clock) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut running = start_in(dir.path(), &clock).await;
        let admin_token = running
            .first_admin_token
            .take()
            .expect("first start creates an admin token")
            .to_string();
        Self {
            dir,
            running: Some(running),
            admin_token,
            shared: None,
            shared_keys: None,
            clock,
        }
    }

    /// Starts a fresh vault with extra config file lines, extra lines at the end of the
    /// starting policy (in a copy of the policies dir), and `clock` as its clock.
    pub async fn start_configured(config: &str, extra_policy: &str, clock: Clock) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        for name in ["model.conf", "policy.csv", "schema.toml"] {
            std::fs::copy(policies_dir().join(name), policies.join(name)).unwrap();
        }
        let mut policy = std::fs::read_to_string(policies.join("policy.csv")).unwrap();
        policy.push_str(extra_policy);
        std::fs::write(policies.join("policy.csv"), policy).unwrap();
        let over = Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.path().join("data")),
            keys_dir: None,
            policies_dir: Some(policies),
            store_url: None,
        };
        let config = format!("{config}{}", store_config(dir.path()));
        let mut config = Config::from_toml(&config, over).unwrap();
        config.clock = clock.clone();
        let mut running = server::start(config).await.unwrap();
        let admin_token = running.first_admin_token.take().unwrap().to_string();
        Self {
            dir,
            running: Some(running),
            admin_token,
            shared: None,
            shared_keys: None,
            clock,
        }
    }

    /// Starts a fresh vault over a store the test keeps a handle to, to alter it while the
    /// server runs (as an attacker with disk access would).
    pub async fn start_shared() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (store, keys) = open_stores(dir.path());
        let config = config_in(dir.path());
        let mut running = server::start_with_stores(config, store.clone(), keys.clone())
            .await
            .unwrap();
        let admin_token = running.first_admin_token.take().unwrap().to_string();
        Self {
            dir,
            running: Some(running),
            admin_token,
            shared: Some(store),
            shared_keys: Some(keys),
            clock: Clock::system(),
        }
    }

    /// Starts a fresh vault over `store` (any implementation, e.g. one that injects faults),
    /// with extra config file lines.
    pub async fn start_over(
        store: Arc<dyn Store>,
        config: &str,
    ) -> (tempfile::TempDir, Running, String) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let over = Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(data),
            keys_dir: None,
            policies_dir: Some(policies_dir()),
            store_url: None,
        };
        let config = Config::from_toml(config, over).unwrap();
        let mut running = server::start_with_store(config, store).await.unwrap();
        let token = running.first_admin_token.take().unwrap().to_string();
        (dir, running, token)
    }

    /// The live store of a `start_shared` vault.
    pub fn store(&self) -> &dyn Store {
        self.shared.as_deref().expect("start_shared")
    }

    /// The live key store of a `start_shared` vault.
    pub fn key_store(&self) -> &dyn Store {
        self.shared_keys.as_deref().expect("start_shared")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The keys dir next to the data dir (the default for a data dir named `data`).
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    pub fn addr(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().addr)
    }

    /// Clients authenticated with `token`.
    pub async fn client(&self, token: &str) -> Client {
        client::connect(&self.addr(), token).await.unwrap()
    }

    /// Clients authenticated as the first admin.
    pub async fn admin(&self) -> Client {
        self.client(&self.admin_token).await
    }

    /// A token for `subject` with `roles`, issued by the admin.
    pub async fn token(&self, subject: &str, roles: &[&str]) -> String {
        self.token_with(subject, roles, "", &[])
            .await
            .unwrap()
            .token
    }

    /// Issues a token for `subject` with `roles`, expiring after `expires_in` (empty: never),
    /// bound to `purposes` (empty: any), as the admin.
    pub async fn token_with(
        &self,
        subject: &str,
        roles: &[&str],
        expires_in: &str,
        purposes: &[&str],
    ) -> Result<pb::CreateTokenResponse, tonic::Status> {
        let mut admin = self.admin().await;
        admin
            .tokens
            .create_token(pb::CreateTokenRequest {
                subject: subject.into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                expires_in: expires_in.into(),
                purposes: purposes.iter().map(|p| (*p).to_owned()).collect(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A client with a new token for `role` (subject `svc:<role name>`).
    pub async fn as_role(&self, role: &str) -> Client {
        let name = role.trim_start_matches("role:");
        let token = self.token(&format!("svc:{name}"), &[role]).await;
        self.client(&token).await
    }

    /// An unauthenticated records client on the same server.
    pub async fn raw_records(&self) -> RecordsClient<Channel> {
        RecordsClient::connect(self.addr()).await.unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        let running = start_in(self.dir.path(), &self.clock).await;
        assert!(
            running.first_admin_token.is_none(),
            "a restart must not create another admin token"
        );
        self.running = Some(running);
    }

    /// The audit log's events as the chain stores them (each event's encoding and hash), read
    /// with the server stopped (from its segment files, or from the database on PostgreSQL);
    /// then starts the server again.
    pub async fn audit_entries(&mut self) -> Vec<(u64, Vec<u8>)> {
        use strongroom::audit::{EventLog, StoreLog};
        self.stop().await;
        let out = if on_postgres() {
            let (store, _) = open_stores(self.dir.path());
            StoreLog::new(store).scan(0, None, usize::MAX).unwrap()
        } else {
            audit_entries_in(&self.data_dir())
        };
        self.restart().await;
        out
    }

    /// Runs `f` on the raw store with the server stopped, then starts the server again.
    pub async fn with_store<T>(&mut self, f: impl FnOnce(&dyn Store) -> T) -> T {
        self.stop().await;
        let out = {
            let (store, _) = open_stores(self.dir.path());
            f(store.as_ref())
        };
        self.restart().await;
        out
    }
}

/// The events of the audit log in the segment files of the stopped vault with `data_dir`.
pub fn audit_entries_in(data_dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    use strongroom::audit::{EventLog, SegmentLog};
    let store: std::sync::Arc<dyn strongroom::storage::Store> =
        std::sync::Arc::new(RocksStore::open(&data_dir.join("db")).unwrap());
    let log = SegmentLog::open(
        &data_dir.join(strongroom::server::AUDIT_DIR),
        store,
        strongroom::audit::SEGMENT_BYTES,
    )
    .unwrap();
    log.scan(0, None, usize::MAX).unwrap()
}

/// A store over a real one that fails, stalls or counts on demand, as a failing disk would;
/// every other call passes through. The one fault-injecting store of the tests.
pub struct Faulty<S> {
    pub inner: S,
    /// Writes fail while set.
    pub fail_writes: AtomicBool,
    /// Purges fail while set.
    pub fail_purges: AtomicBool,
    /// Purges attempted.
    pub purges: AtomicUsize,
    /// The most operations one written batch held.
    pub largest_batch: AtomicUsize,
    /// Scans of more than one audit event pass here (and wait while it is closed).
    pub audit_scans: Arc<Gate>,
    /// Writes pass here (and wait while it is closed: a stalled disk).
    pub writes: Arc<Gate>,
}

impl<S> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_purges: AtomicBool::new(false),
            purges: AtomicUsize::new(0),
            largest_batch: AtomicUsize::new(0),
            audit_scans: Arc::new(Gate::default()),
            writes: Arc::new(Gate::default()),
        }
    }
}

/// Where threads wait while it is closed; it counts every pass.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// How many passed (or are waiting).
    pub entered: AtomicUsize,
}

impl Gate {
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

impl<S: Store> Store for Faulty<S> {
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn snapshot(&self) -> Box<dyn Snapshot + '_> {
        self.inner.snapshot()
    }
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(ks, key)
    }
    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.inner.multi_get(ks, keys)
    }
    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.scan_prefix(ks, prefix)
    }
    fn scan_range(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if ks == Keyspace::Audit && limit > 1 {
            self.audit_scans.pass();
        }
        self.inner.scan_range(ks, from, to, limit)
    }
    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError> {
        self.inner.last(ks)
    }
    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        self.writes.pass();
        self.largest_batch
            .fetch_max(batch.ops().len(), Ordering::SeqCst);
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Io("injected write failure".into()));
        }
        self.inner.write(batch)
    }
    fn purge(&self, prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError> {
        self.purges.fetch_add(1, Ordering::SeqCst);
        if self.fail_purges.load(Ordering::SeqCst) {
            return Err(StoreError::Io("injected flush failure".into()));
        }
        self.inner.purge(prefixes)
    }
}

/// The default config of a vault in `dir` (data in `dir/data`), on the store the tests run on.
pub fn config_in(dir: &Path) -> Config {
    let over = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("data")),
        keys_dir: None,
        policies_dir: Some(policies_dir()),
        store_url: None,
    };
    Config::from_toml(&store_config(dir), over).unwrap()
}

async fn start_in(dir: &Path, clock: &Clock) -> Running {
    let mut config = config_in(dir);
    config.clock = clock.clone();
    server::start(config).await.unwrap()
}

/// `n` spelled with letters, a digit each (names may not hold digits): 12 -> `bc`.
pub fn letters(n: u64) -> String {
    n.to_string()
        .bytes()
        .map(|b| char::from(b'a' + (b - b'0')))
        .collect()
}

/// A customer with every field type set.
pub fn customer(tag: &str) -> Vec<pb::Field> {
    [
        ("name", format!("Ada {tag} Lovelace")),
        ("email", format!("ada.{tag}@example.com")),
        ("phone", "+44 20 7946 0958".to_owned()),
        ("address", format!("12 St James's Square {tag}, London")),
        ("date_of_birth", "1815-12-10".to_owned()),
        ("ssn", "123-45-6789".to_owned()),
        ("card_number", "4242 4242 4242 4242".to_owned()),
        ("notes", format!("prefers email; ref {tag}")),
    ]
    .into_iter()
    .map(|(name, value)| pb::Field {
        name: name.into(),
        value,
    })
    .collect()
}

pub fn field(name: &str, value: &str) -> pb::Field {
    pb::Field {
        name: name.into(),
        value: value.into(),
    }
}

/// Issues a token for `subject` with `roles`, never expiring, through `admin`; returns it.
pub async fn issue_token(admin: &Client, subject: &str, roles: &[&str]) -> String {
    admin
        .tokens
        .clone()
        .create_token(pb::CreateTokenRequest {
            subject: subject.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

pub async fn create(client: &mut Client, fields: Vec<pb::Field>) -> String {
    client
        .records
        .create_record(pb::CreateRecordRequest {
            collection: "customers".into(),
            fields,
            honeytoken: false,
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

pub async fn get(
    client: &mut Client,
    id: &str,
    purpose: &str,
) -> Result<pb::GetRecordResponse, tonic::Status> {
    client
        .records
        .get_record(pb::GetRecordRequest {
            id: id.into(),
            fields: vec![],
            purpose: purpose.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every audit event `filter` matches, oldest first (all pages).
pub async fn events(client: &mut Client, filter: pb::EventFilter) -> Vec<pb::AuditEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: Some(filter.clone()),
                page_size: 1000,
                after_seq: after,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_after_seq == 0 {
            return out;
        }
        after = page.next_after_seq;
    }
}

/// Every audit event of `method`, oldest first.
pub async fn events_of(client: &mut Client, method: &str) -> Vec<pb::AuditEvent> {
    let filter = pb::EventFilter {
        method: method.into(),
        ..pb::EventFilter::default()
    };
    events(client, filter).await
}

/// The whole audit log, verified through `client`.
pub async fn verified(client: &mut Client) -> pb::VerifyLogResponse {
    client
        .audit
        .verify_log(pb::VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// `(name, disclosure, value)` of each returned field.
pub fn view(resp: &pb::GetRecordResponse) -> Vec<(String, pb::Disclosure, String)> {
    resp.fields
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                pb::Disclosure::try_from(f.disclosure).unwrap(),
                f.value.clone(),
            )
        })
        .collect()
}

pub fn value_of<'a>(
    resp: &'a pb::GetRecordResponse,
    name: &str,
) -> Option<(&'a str, pb::Disclosure)> {
    resp.fields.iter().find(|f| f.name == name).map(|f| {
        (
            f.value.as_str(),
            pb::Disclosure::try_from(f.disclosure).unwrap(),
        )
    })
}

pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
) -> tonic::Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            status
        }
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Where the vault's store keeps its files: the data dir, or on PostgreSQL the test cluster's
/// directory (every node's data files and WAL).
pub fn store_files_dir(vault: &Vault) -> PathBuf {
    if on_postgres() {
        PathBuf::from(pg_env("STRONGROOM_TEST_PG_CLUSTER"))
    } else {
        vault.data_dir()
    }
}

/// The files under `dir` that contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    assert!(!needle.is_empty());
    files_under(dir)
        .into_iter()
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap_or_default();
            memchr::memmem::find(&bytes, needle).is_some()
        })
        .collect()
}

/// The record id's 16 bytes.
pub fn id_bytes(id: &str) -> Vec<u8> {
    hex::decode(id).unwrap()
}

/// The wrapped data keys in the key store of a stopped vault's keys dir (the sealed bytes at
/// the end of each entry: nonce, ciphertext and tag).
pub fn wrapped_keys(keys_dir: &Path) -> Vec<Vec<u8>> {
    let store = RocksStore::open(&keys_dir.join("keystore")).unwrap();
    store
        .scan_prefix(Keyspace::Deks, b"")
        .unwrap()
        .into_iter()
        .map(|(_, v)| v[v.len() - 88..].to_vec())
        .collect()
}

/// The wrapped data key of a record (its newest version) in a stopped vault's key store.
pub fn wrapped_key_of(keys_dir: &Path, id: &str) -> Vec<u8> {
    let (_, v) = key_entries(keys_dir, id).pop().expect("a wrapped key");
    v[v.len() - 88..].to_vec()
}

/// A record's key-store entries (one per version, `id | version`), oldest first, in a stopped
/// vault's key store.
pub fn key_entries(keys_dir: &Path, id: &str) -> Vec<KeyValue> {
    let store = RocksStore::open(&keys_dir.join("keystore")).unwrap();
    store.scan_prefix(Keyspace::Deks, &id_bytes(id)).unwrap()
}

/// The stored header and `(key, ciphertext)` of each field of a record (not its own entries,
/// `id | '#' | name`, such as its times).
pub fn stored(store: &dyn Store, id: &str) -> (Vec<u8>, Vec<KeyValue>) {
    let key = id_bytes(id);
    let header = store.get(Keyspace::Headers, &key).unwrap().expect("header");
    let fields = store
        .scan_prefix(Keyspace::Records, &key)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.get(key.len()) != Some(&b'#'))
        .collect();
    (header, fields)
}

/// Reads what `strongroom serve` prints on stdout when it starts: the address it listens on (as
/// an `http://` URL) and, on a first start, the admin token. `None` if it printed no address.
pub fn read_banner(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    first_start: bool,
) -> Option<(String, Option<String>)> {
    let first = lines.next()?.ok()?;
    let addr = first
        .strip_prefix("strongroom listening on ")?
        .split_whitespace()
        .next()?
        .to_owned();
    let mut token = None;
    if first_start {
        // A first start prints the admin token on the next two lines.
        for line in lines.by_ref().take(2) {
            if let Some(t) = line.ok()?.split("STRONGROOM_TOKEN=").nth(1) {
                token = Some(t.to_owned());
            }
        }
    }
    Some((format!("http://{addr}"), token))
}

/// The vault as a child process, killed with SIGKILL when dropped.
pub struct ChildVault {
    pub child: std::process::Child,
    pub addr: String,
    pub token: Option<String>,
}

impl ChildVault {
    pub fn start(data_dir: &std::path::Path) -> Self {
        Self::start_with(data_dir, &[], &[])
    }

    pub fn start_with(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let first_start = !data_dir.join("db").exists();
        // STRONGROOM_BIN runs another build (scripts/soak.sh runs a copy, so rebuilding the
        // tree during a long soak does not swap the binary under it).
        let bin = std::env::var_os("STRONGROOM_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_strongroom")),
            PathBuf::from,
        );
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--policies")
            .arg(policies_dir())
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (addr, token) =
            read_banner(&mut lines, first_start).expect("strongroom serve printed its address");
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr, token }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the vault exited with {status}");
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for ChildVault {
    fn drop(&mut self) {
        self.kill();
    }
}
