//! The PostgreSQL store: one table `kv (ks smallint, k bytea, v bytea)` per schema, keyed
//! `(ks, k)`, so that prefix and range scans are index range scans in bytea order (memcmp, then
//! length: the order of RocksDB's bytewise comparator). A batch is one transaction; a snapshot
//! is a read-only REPEATABLE READ transaction on a connection of its own. The only file that
//! names `tokio_postgres`.
//!
//! The `Store` trait is synchronous (RocksDB answers in microseconds). Here every call is a
//! round trip, so the store runs its connections on a small runtime of its own and the calling
//! thread waits for the answer; a caller on a worker of a multi-threaded tokio runtime waits
//! through `block_in_place`, which hands the worker's other tasks to another thread meanwhile.
//!
//! Durability is the database's: a batch is acknowledged when its COMMIT is, which on a cluster
//! with `synchronous_standby_names` means flushed on the primary and the standbys it names.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, config::SslMode, error::SqlState, types::ToSql};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Batch, KeyValue, Keyspace, Op, Snapshot, Store, StoreError, prefix_end};

/// How many times a batch is tried when the database aborts it for a serialization failure or
/// a deadlock (nothing of it was applied), and a read when its connection broke.
const ATTEMPTS: u32 = 5;
/// The first wait before another attempt; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// How long a purge waits for transactions older than it to end.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);
/// The longest a caller waits for the database's answer (a commit waiting for a synchronous
/// standby that is gone waits until one is back): past it the call fails, and a write's
/// outcome is unknown.
const ANSWER_WAIT: Duration = Duration::from_secs(60);
/// How long a caller waits for a pooled connection, and a new connection to open.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a PostgreSQL store.
#[derive(Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// `postgres://user@host1:port1,host2:port2/db?target_session_attrs=read-write`. Several
    /// hosts are tried in order; `target_session_attrs=read-write` finds the primary.
    pub url: String,
    /// The schema holding the table, created if missing: a letter or `_`, then letters, digits
    /// and `_`, at most 63.
    pub schema: String,
    /// Connections kept open for reads and writes, and as many again for snapshots.
    pub pool_size: usize,
    /// The certificate authorities (PEM) the database's certificate must chain to. Given,
    /// every connection is TLS, whatever the URL's `sslmode`: the server's certificate is
    /// verified against them and against the host the URL names, and a server that offers no
    /// TLS is refused, never used in plaintext. `None`: plaintext, unless the URL asks for TLS
    /// (`sslmode=require`), which is then refused for want of a CA to verify against.
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show where it points, never who connects.
        f.debug_struct("PgOptions")
            .field("url", &redacted(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The URL without its user information (`postgres://host/db`) nor a `password` parameter, for
/// messages and logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a postgres:// URL)".into();
    };
    // Everything up to the last `@` goes, so a `?` or `/` in a password cannot hide its end
    // (an `@` in a query parameter only hides more).
    let rest = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
    let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.to_ascii_lowercase().contains("password"))
        .collect();
    if kept.is_empty() {
        format!("{scheme}://{address}")
    } else {
        format!("{scheme}://{address}?{}", kept.join("&"))
    }
}

/// Where a URL's database name is: the path after the hosts, up to the query.
fn database_span(url: &str) -> Result<std::ops::Range<usize>, String> {
    let Some(after) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err("must start with postgres://".into());
    };
    // The hosts begin after the user information, which may hold a `/` or `?` of its own.
    let at = url.len() - after.len() + after.rfind('@').map_or(0, |i| i + 1);
    let end = url[at..].find('?').map_or(url.len(), |i| at + i);
    let start = url[at..end]
        .find('/')
        .map(|i| at + i + 1)
        .ok_or_else(|| "name the database: postgres://host/strongroom".to_owned())?;
    Ok(start..end)
}

/// The database a `postgres://` URL names.
///
/// # Errors
/// A message if it is not such a URL or names no database.
pub fn pg_database(url: &str) -> Result<String, String> {
    let span = database_span(url)?;
    let db = &url[span];
    if db.is_empty()
        || !db
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(
            "name the database with letters, digits, _ and -: postgres://host/strongroom".into(),
        );
    }
    Ok(db.to_owned())
}

/// The same URL naming another database.
///
/// # Errors
/// As `pg_database`.
pub fn pg_with_database(url: &str, database: &str) -> Result<String, String> {
    pg_database(url)?;
    let span = database_span(url)?;
    Ok(format!(
        "{}{database}{}",
        &url[..span.start],
        &url[span.end..]
    ))
}

/// Whether `schema` is a plain SQL identifier (never quoted, so never case-folded).
pub fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

/// The SQL of every statement, with the schema in it.
struct Sql {
    schema: String,
    get: String,
    get_for_update: String,
    get_for_share: String,
    multi_get: String,
    scan_from: String,
    scan_between: String,
    range_from: String,
    range_between: String,
    last: String,
    put: String,
    delete: String,
    delete_range: String,
    vacuum: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        // Quoted, so that a reserved word (`user`) is a schema name too; it is lowercase, so
        // quoting changes nothing else.
        let t = format!("\"{schema}\".kv");
        Self {
            schema: schema.to_owned(),
            get: format!("SELECT v FROM {t} WHERE ks = $1 AND k = $2"),
            get_for_update: format!("SELECT v FROM {t} WHERE ks = $1 AND k = $2 FOR UPDATE"),
            get_for_share: format!("SELECT v FROM {t} WHERE ks = $1 AND k = $2 FOR SHARE"),
            multi_get: format!("SELECT k, v FROM {t} WHERE ks = $1 AND k = ANY($2)"),
            scan_from: format!("SELECT k, v FROM {t} WHERE ks = $1 AND k >= $2 ORDER BY k"),
            scan_between: format!(
                "SELECT k, v FROM {t} WHERE ks = $1 AND k >= $2 AND k < $3 ORDER BY k"
            ),
            range_from: format!(
                "SELECT k, v FROM {t} WHERE ks = $1 AND k >= $2 ORDER BY k LIMIT $3"
            ),
            range_between: format!(
                "SELECT k, v FROM {t} WHERE ks = $1 AND k >= $2 AND k < $3 ORDER BY k LIMIT $4"
            ),
            last: format!("SELECT k, v FROM {t} WHERE ks = $1 ORDER BY k DESC LIMIT 1"),
            put: format!(
                "INSERT INTO {t} (ks, k, v) VALUES ($1, $2, $3) \
                 ON CONFLICT (ks, k) DO UPDATE SET v = EXCLUDED.v"
            ),
            delete: format!("DELETE FROM {t} WHERE ks = $1 AND k = $2"),
            delete_range: format!("DELETE FROM {t} WHERE ks = $1 AND k >= $2 AND k < $3"),
            vacuum: format!("VACUUM (INDEX_CLEANUP ON) {t}"),
        }
    }

    /// Creates the schema and the table if missing. Values are stored out of line without
    /// compression: ciphertext does not compress.
    ///
    /// An existing table is left alone, untouched by any DDL: `ALTER TABLE` takes an ACCESS
    /// EXCLUSIVE lock, which waits for every open transaction on the table while every later
    /// query waits behind it, so a node starting next to busy ones would stall them all. Nodes
    /// starting together create it one at a time (a transaction-scoped advisory lock named by
    /// the schema), so the second finds the first's table instead of failing on it.
    fn create(&self) -> String {
        let s = format!("\"{}\"", self.schema);
        // The schema name is a checked identifier ([a-z_][a-z0-9_]*): safe in a literal.
        let schema = &self.schema;
        // READ COMMITTED whatever the database's default: each statement then sees the
        // catalog as committed when it starts, so the check after the lock sees a table
        // another node created while this one waited. The lock's first key is ours alone.
        format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED;
             SELECT pg_advisory_xact_lock({CREATE_LOCK}, hashtext('{schema}'));
             DO $create$ BEGIN
                 IF to_regclass('{s}.kv') IS NULL THEN
                     CREATE SCHEMA IF NOT EXISTS {s};
                     CREATE TABLE {s}.kv (
                         ks smallint NOT NULL,
                         k bytea NOT NULL,
                         v bytea NOT NULL,
                         PRIMARY KEY (ks, k)
                     );
                     ALTER TABLE {s}.kv ALTER COLUMN v SET STORAGE EXTERNAL;
                 END IF;
             END $create$;
             COMMIT;"
        )
    }
}

/// The TLS connector of a store with `postgres.ca_file`: rustls (ring, TLS 1.2 and 1.3) trusting
/// only the certificates in `ca_file`.
fn tls_connector(ca_file: &std::path::Path) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::tls::read_certificates_der(ca_file, "postgres.ca_file")? {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .map_err(|e| format!("postgres.ca_file: {}: {e}", ca_file.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("postgres.ca_file: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The first key of the advisory lock nodes creating a store's table take ("srcr"), the second
/// being the schema's hash: apart from other applications' locks on the same database.
const CREATE_LOCK: i32 = 0x7372_6372;

/// The keyspace's number in the table. Fixed: changing one would move stored data.
fn code(ks: Keyspace) -> i16 {
    match ks {
        Keyspace::Audit => 1,
        Keyspace::Deks => 2,
        Keyspace::Headers => 3,
        Keyspace::Index => 4,
        Keyspace::Meta => 5,
        Keyspace::Records => 6,
        Keyspace::Tombstones => 7,
    }
}

/// The database's error as a store error: its SQLSTATE and message, never its detail (which
/// can quote a key).
fn pg(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Io(match e.as_db_error() {
        Some(db) => format!(
            "PostgreSQL {} ({}): {}",
            db.severity(),
            db.code().code(),
            db.message()
        ),
        // The client's own error (a connection, a TLS handshake): its causes say what failed,
        // such as the certificate check, and quote no data.
        None => format!("PostgreSQL: {}", crate::tls::error_chain(e)),
    })
}

fn pool_error(e: &deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => pg(e),
        PoolError::Timeout(_)
        | PoolError::Closed
        | PoolError::NoRuntimeSpecified
        | PoolError::PostCreateHook(_) => {
            StoreError::Io(format!("PostgreSQL connection pool: {e}"))
        }
    }
}

/// Whether the database aborted the transaction before applying any of it and asked for a
/// retry: a serialization failure or a deadlock.
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// A failure of the connection rather than of the statement: the server went away (a crash, a
/// failover), so the call may succeed on a new connection.
fn broken(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|c| {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION
        })
        || (e.as_db_error().is_none() && e.code().is_none())
}

/// PostgreSQL behind the `Store` trait.
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    /// The connections that hold snapshots, apart: a caller holding a snapshot may read or write
    /// through the store too, and must not wait for a connection other snapshots hold.
    snapshots: Pool,
    sql: Arc<Sql>,
    shown: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.shown)
            .field("schema", &self.sql.schema)
            .finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The store may be dropped on an async task: a runtime must not block one there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects (creating the schema and the table if missing).
    ///
    /// # Errors
    /// `StoreError::Open` naming the database (never its credentials) and what went wrong.
    pub fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let shown = format!("{} schema {}", redacted(&options.url), options.schema);
        let open_error = |detail: String| StoreError::Open {
            path: shown.clone(),
            detail,
        };
        if !valid_schema(&options.schema) {
            return Err(open_error(
                "the schema must be a lowercase letter or _, then lowercase letters, digits and _, at most 63".into(),
            ));
        }
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|_| open_error("not a valid postgres:// URL".into()))?;
        let tls = match &options.ca_file {
            Some(ca_file) => {
                // Verified TLS or no connection: never a silent fall back to plaintext.
                config.ssl_mode(SslMode::Require);
                Some(tls_connector(ca_file).map_err(open_error)?)
            }
            None if config.get_ssl_mode() == SslMode::Require => {
                return Err(open_error(
                    "the URL asks for TLS (sslmode=require): set postgres.ca_file to the CA \
                     the database's certificate chains to"
                        .into(),
                ));
            }
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strongroom-pg")
            .enable_all()
            .build()
            .map_err(|e| open_error(format!("cannot start its runtime: {e}")))?;
        let pool = || {
            let manager_config = ManagerConfig {
                // A connection returned to the pool is checked before reuse (a failover
                // closes every connection to the old primary).
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
                None => Manager::from_config(config.clone(), NoTls, manager_config),
            };
            Pool::builder(manager)
                .max_size(options.pool_size.max(1))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_TIMEOUT))
                .create_timeout(Some(POOL_TIMEOUT))
                .build()
                .map_err(|e| open_error(format!("cannot build the connection pool: {e}")))
        };
        let store = Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool: pool()?,
            snapshots: pool()?,
            sql: Arc::new(Sql::new(&options.schema)),
            shown: shown.clone(),
        };
        let create = store.sql.create();
        store
            .run(|pool, _| async move {
                let client = pool.get().await.map_err(|e| pool_error(&e))?;
                client.batch_execute(&create).await.map_err(|e| pg(&e))
            })
            .map_err(|e| open_error(e.to_string()))?;
        Ok(store)
    }

    /// Drops the store's schema and everything in it: for the throwaway stores `strongroom
    /// bench --store` creates.
    ///
    /// # Errors
    /// `StoreError::Io` if the database refuses.
    pub(crate) fn drop_schema(self) -> Result<(), StoreError> {
        // Without the notice naming each table the drop cascades to.
        let drop = format!(
            "SET client_min_messages = warning; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.sql.schema
        );
        self.run(|pool, _| async move {
            let client = pool.get().await.map_err(|e| pool_error(&e))?;
            client.batch_execute(&drop).await.map_err(|e| pg(&e))
        })
    }

    /// Runs the future `f` makes on the store's runtime, and waits for its answer.
    fn run<T, Fut>(&self, f: impl FnOnce(Pool, Arc<Sql>) -> Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.block_on(f(self.pool.clone(), Arc::clone(&self.sql)))
    }

    fn block_on<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let wait = || rx.recv_timeout(ANSWER_WAIT);
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            Ok(_) | Err(_) => wait(),
        };
        answer.map_err(|e| {
            StoreError::Io(match e {
                std::sync::mpsc::RecvTimeoutError::Timeout => format!(
                    "PostgreSQL did not answer within {} s",
                    ANSWER_WAIT.as_secs()
                ),
                std::sync::mpsc::RecvTimeoutError::Disconnected => {
                    "the PostgreSQL store stopped".into()
                }
            })
        })?
    }

    /// A read on a pooled connection, tried again on a new one when its connection broke (a
    /// crash, a failover), up to `ATTEMPTS` times.
    fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Object, Arc<Sql>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        self.run(move |pool, sql| async move {
            with_retries(&pool, broken, pg, |c| f(c, Arc::clone(&sql))).await
        })
    }
}

/// Runs `f` on a pooled connection, and again on another after a growing wait when its error
/// passes `may_retry`, up to `ATTEMPTS` times in all; the last error is told by `gave_up`.
async fn with_retries<T, F, Fut>(
    pool: &Pool,
    may_retry: fn(&tokio_postgres::Error) -> bool,
    gave_up: impl Fn(&tokio_postgres::Error) -> StoreError,
    f: F,
) -> Result<T, StoreError>
where
    F: Fn(Object) -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let client = pool.get().await.map_err(|e| pool_error(&e))?;
        match f(client).await {
            Ok(v) => return Ok(v),
            Err(e) if may_retry(&e) && attempt < ATTEMPTS => {
                tracing::warn!(error = %pg(&e), attempt, "PostgreSQL call failed; trying again");
            }
            Err(e) => return Err(gave_up(&e)),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        attempt += 1;
    }
}

fn rows_to_pairs(rows: Vec<tokio_postgres::Row>) -> Result<Vec<KeyValue>, tokio_postgres::Error> {
    rows.into_iter()
        .map(|row| Ok((row.try_get::<_, Vec<u8>>(0)?, row.try_get::<_, Vec<u8>>(1)?)))
        .collect()
}

/// The reads a snapshot and the store share, on one client (a pooled one, or the snapshot's
/// transaction).
async fn get(
    c: &Object,
    sql: &Sql,
    ks: Keyspace,
    key: &[u8],
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    let stmt = c.prepare_cached(&sql.get).await?;
    let row = c.query_opt(&stmt, &[&code(ks), &key]).await?;
    row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()
}

async fn multi_get(
    c: &Object,
    sql: &Sql,
    ks: Keyspace,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Vec<u8>>>, tokio_postgres::Error> {
    let stmt = c.prepare_cached(&sql.multi_get).await?;
    let rows = c.query(&stmt, &[&code(ks), &keys]).await?;
    let found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
        rows_to_pairs(rows)?.into_iter().collect();
    Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
}

async fn scan_prefix(
    c: &Object,
    sql: &Sql,
    ks: Keyspace,
    prefix: &[u8],
) -> Result<Vec<KeyValue>, tokio_postgres::Error> {
    let rows = match prefix_end(prefix) {
        Some(end) => {
            let stmt = c.prepare_cached(&sql.scan_between).await?;
            c.query(&stmt, &[&code(ks), &prefix, &end]).await?
        }
        None => {
            let stmt = c.prepare_cached(&sql.scan_from).await?;
            c.query(&stmt, &[&code(ks), &prefix]).await?
        }
    };
    rows_to_pairs(rows)
}

impl Store for PgStore {
    fn snapshot(&self) -> Box<dyn Snapshot + '_> {
        let snapshots = self.snapshots.clone();
        let begun = self.block_on(async move {
            let client = snapshots.get().await.map_err(|e| pool_error(&e))?;
            // The snapshot is taken by the transaction's first statement.
            match client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
                .await
            {
                Ok(()) => Ok(client),
                Err(e) => {
                    // Never hand out a connection that may be inside a transaction.
                    let _ = Object::take(client);
                    Err(pg(&e))
                }
            }
        });
        Box::new(PgSnapshot {
            store: self,
            client: Mutex::new(begun),
        })
    }

    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.read(move |c, sql| {
            let key = key.clone();
            async move { get(&c, &sql, ks, &key).await }
        })
    }

    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys = keys.to_vec();
        self.read(move |c, sql| {
            let keys = keys.clone();
            async move { multi_get(&c, &sql, ks, &keys).await }
        })
    }

    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = prefix.to_vec();
        self.read(move |c, sql| {
            let prefix = prefix.clone();
            async move { scan_prefix(&c, &sql, ks, &prefix).await }
        })
    }

    fn scan_range(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let from = from.to_vec();
        let to = to.map(<[u8]>::to_vec);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c, sql| {
            let (from, to) = (from.clone(), to.clone());
            async move {
                let rows = match &to {
                    Some(to) => {
                        let stmt = c.prepare_cached(&sql.range_between).await?;
                        c.query(&stmt, &[&code(ks), &from, to, &limit]).await?
                    }
                    None => {
                        let stmt = c.prepare_cached(&sql.range_from).await?;
                        c.query(&stmt, &[&code(ks), &from, &limit]).await?
                    }
                };
                rows_to_pairs(rows)
            }
        })
    }

    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError> {
        self.read(move |c, sql| async move {
            let stmt = c.prepare_cached(&sql.last).await?;
            let rows = c.query(&stmt, &[&code(ks)]).await?;
            Ok(rows_to_pairs(rows)?.into_iter().next())
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Tried again only when the database aborted it (nothing was applied). Any other
        // error, a broken connection included, is the caller's to see: whether a COMMIT that
        // lost its connection was applied is unknown. A batch with preconditions still aborted
        // after its attempts lost its race with other writers of the rows it expects: a
        // conflict, which the caller decides again on what it reads then (under load, two
        // vault nodes appending to one audit chain abort each other's transactions).
        let expected = batch.ops().iter().find_map(|op| match op {
            Op::Expect(ks, ..) => Some(ks.name()),
            Op::Put(..) | Op::Delete(..) | Op::DeleteRange(..) => None,
        });
        let gave_up = move |e: &tokio_postgres::Error| match expected {
            Some(ks) if retryable(e) => StoreError::Conflict(ks),
            Some(_) | None => pg(e),
        };
        let batch = Arc::new(batch);
        self.run(|pool, sql| async move {
            with_retries(&pool, retryable, gave_up, |mut c| {
                let (sql, batch) = (Arc::clone(&sql), Arc::clone(&batch));
                async move { apply(&mut c, &sql, &batch).await }
            })
            .await?
            .map_err(StoreError::Conflict)
        })
    }

    /// Vacuums the whole table, whatever the prefixes: VACUUM works by table.
    fn purge(&self, _prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError> {
        self.run(|pool, sql| async move {
            let client = pool.get().await.map_err(|e| pool_error(&e))?;
            // Every batch acknowledged before now was committed by a transaction older than
            // this one's id. A transaction still running from before it may see the deleted
            // rows, and would keep VACUUM from removing them: wait for those to end.
            let row = client
                .query_one("SELECT txid_current()", &[])
                .await
                .map_err(|e| pg(&e))?;
            let start: i64 = first_bigint(&row)?;
            let deadline = Instant::now() + SNAPSHOT_WAIT;
            loop {
                let older = client
                    .query_one(
                        "SELECT count(*) FROM (
                             SELECT backend_xmin AS x FROM pg_stat_activity
                              WHERE datname = current_database() AND pid <> pg_backend_pid()
                             UNION ALL
                             SELECT backend_xid FROM pg_stat_activity
                              WHERE datname = current_database() AND pid <> pg_backend_pid()
                             UNION ALL
                             SELECT transaction FROM pg_prepared_xacts
                              WHERE database = current_database()
                             UNION ALL
                             SELECT xmin FROM pg_replication_slots
                             UNION ALL
                             SELECT backend_xmin FROM pg_stat_replication
                         ) t WHERE x IS NOT NULL AND age(x) >= age(($1::bigint % 4294967296)::text::xid)",
                        &[&start],
                    )
                    .await
                    .map_err(|e| pg(&e))?;
                let older: i64 = first_bigint(&older)?;
                if older == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(StoreError::Io(format!(
                        "purge: {older} transaction(s) older than the purge still run and could \
                         keep the deleted rows alive; try again"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client.batch_execute(&sql.vacuum).await.map_err(|e| pg(&e))?;
            // The WAL that holds the deleted rows becomes recyclable after a checkpoint.
            client.batch_execute("CHECKPOINT").await.map_err(|e| pg(&e))
        })
    }
}

/// The first column of a row, a bigint.
fn first_bigint(row: &tokio_postgres::Row) -> Result<i64, StoreError> {
    row.try_get(0).map_err(|e| pg(&e))
}

/// Applies a batch in one transaction, its statements pipelined in order; `Ok(Err(keyspace))`
/// if a precondition did not hold (nothing applied).
///
/// A batch with preconditions runs SERIALIZABLE and locks each expected row before it writes
/// (`FOR UPDATE` where the batch writes the row, `FOR SHARE` where it only expects it): a writer that changed the row after this transaction began makes it fail
/// with a serialization failure (retried, and the retry sees the change), and one that changes
/// it later waits for the commit. An expected absence is covered by SERIALIZABLE's predicate
/// locks. Both are portable SQL (CockroachDB runs every transaction SERIALIZABLE).
async fn apply(
    client: &mut Object,
    sql: &Sql,
    batch: &Batch,
) -> Result<Result<(), &'static str>, tokio_postgres::Error> {
    let tx = if batch.is_conditional() {
        client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::Serializable)
            .start()
            .await?
    } else {
        client.transaction().await?
    };
    let for_update = tx.prepare_cached(&sql.get_for_update).await?;
    let for_share = tx.prepare_cached(&sql.get_for_share).await?;
    for op in batch.ops() {
        if let Op::Expect(ks, key, value) = op {
            // Locked for update only where the batch writes it: batches that only expect a
            // value (a fence) do not wait for one another.
            let lock = match batch.writes(*ks, key) {
                true => &for_update,
                false => &for_share,
            };
            let row = tx.query_opt(lock, &[&code(*ks), key]).await?;
            let now = row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()?;
            if now != *value {
                tx.rollback().await?;
                return Ok(Err(ks.name()));
            }
        }
    }
    let put = tx.prepare_cached(&sql.put).await?;
    let delete = tx.prepare_cached(&sql.delete).await?;
    let delete_range = tx.prepare_cached(&sql.delete_range).await?;
    let writes: Vec<(&Op, i16)> = batch
        .ops()
        .iter()
        .filter_map(|op| match op {
            Op::Put(ks, ..) | Op::Delete(ks, _) | Op::DeleteRange(ks, ..) => Some((op, code(*ks))),
            Op::Expect(..) => None,
        })
        .collect();
    let statements: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> = writes
        .iter()
        .filter_map(|(op, ks)| match op {
            Op::Put(_, k, v) => Some((&put, vec![ks as &(dyn ToSql + Sync), k, v])),
            Op::Delete(_, k) => Some((&delete, vec![ks as &(dyn ToSql + Sync), k])),
            Op::DeleteRange(_, from, to) => {
                Some((&delete_range, vec![ks as &(dyn ToSql + Sync), from, to]))
            }
            Op::Expect(..) => None,
        })
        .collect();
    // Sent in order, one after another without waiting: the server runs them in that order.
    futures_util::future::try_join_all(
        statements
            .iter()
            .map(|(stmt, params)| tx.execute(*stmt, params)),
    )
    .await?;
    tx.commit().await.map(Ok)
}

/// A read-only REPEATABLE READ transaction on a connection of its own; rolled back when dropped.
struct PgSnapshot<'a> {
    store: &'a PgStore,
    /// The connection holding the transaction (taken out while a read runs on it), or why the
    /// transaction could not begin.
    client: Mutex<Result<Object, StoreError>>,
}

impl PgSnapshot<'_> {
    fn on<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Object, Arc<Sql>) -> Fut + Send + 'static,
        Fut: Future<Output = (Object, Result<T, tokio_postgres::Error>)> + Send,
    {
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        let client = match std::mem::replace(
            &mut *slot,
            Err(StoreError::Io("a snapshot read is running".into())),
        ) {
            Ok(c) => c,
            Err(e) => {
                let again = StoreError::Io(e.to_string());
                *slot = Err(e);
                return Err(again);
            }
        };
        let sql = Arc::clone(&self.store.sql);
        let (client, result) = self
            .store
            .block_on(async move { Ok(f(client, sql).await) })?;
        *slot = Ok(client);
        result.map_err(|e| pg(&e))
    }
}

impl Drop for PgSnapshot<'_> {
    fn drop(&mut self) {
        let slot = std::mem::replace(
            self.client
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
            Err(StoreError::Io("dropped".into())),
        );
        if let Ok(client) = slot {
            // Ended before returning: a purge right after the drop must not see it running.
            let _ = self.store.block_on(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    // Never hand out a connection still inside a transaction.
                    let _ = Object::take(client);
                }
                Ok(())
            });
        }
    }
}

impl Snapshot for PgSnapshot<'_> {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.on(move |c, sql| async move {
            let r = get(&c, &sql, ks, &key).await;
            (c, r)
        })
    }

    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys = keys.to_vec();
        self.on(move |c, sql| async move {
            let r = multi_get(&c, &sql, ks, &keys).await;
            (c, r)
        })
    }

    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = prefix.to_vec();
        self.on(move |c, sql| async move {
            let r = scan_prefix(&c, &sql, ks, &prefix).await;
            (c, r)
        })
    }
}

/// A store on the test cluster `make test` starts (`scripts/pg-cluster.sh`), in a new schema.
#[cfg(test)]
pub(super) fn test_options(tag: &str, pool_size: usize) -> PgOptions {
    let url = std::env::var("STRONGROOM_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "STRONGROOM_TEST_PG is not set: run `make test`, or start the test cluster with \
             `eval \"$(scripts/pg-cluster.sh env)\"`"
        )
    });
    PgOptions {
        url,
        schema: format!("{tag}_{}_{}", std::process::id(), rand::random::<u32>()),
        pool_size,
        ca_file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema named by a reserved word works like any other.
    #[test]
    fn a_schema_named_like_a_keyword_opens_and_stores() {
        let mut options = test_options("unused", 1);
        options.schema = "user".into();
        let store = PgStore::open(&options).unwrap_or_else(|e| panic!("{e}"));
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, b"k".to_vec(), b"v".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            store
                .get(Keyspace::Meta, b"k")
                .unwrap_or_else(|e| panic!("{e}")),
            Some(b"v".to_vec())
        );
    }

    /// A use case reads its record through a snapshot and writes its audit event through the
    /// store while the snapshot lives: with every pooled connection held by snapshots, that
    /// write would wait for a connection until the pool's timeout.
    #[test]
    fn a_caller_holding_snapshots_still_reads_and_writes_with_a_pool_of_one() {
        let store = PgStore::open(&test_options("pool", 1)).unwrap_or_else(|e| panic!("{e}"));
        let mut batch = Batch::new();
        batch.put(Keyspace::Records, b"a".to_vec(), b"1".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let snap = store.snapshot();
        assert_eq!(
            snap.get(Keyspace::Records, b"a")
                .unwrap_or_else(|e| panic!("{e}")),
            Some(b"1".to_vec())
        );
        let started = Instant::now();
        let mut batch = Batch::new();
        batch.put(Keyspace::Audit, b"e".to_vec(), b"event".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        assert!(store.get(Keyspace::Audit, b"e").is_ok_and(|v| v.is_some()));
        assert!(
            started.elapsed() < POOL_TIMEOUT,
            "the write waited for the snapshot's connection"
        );
        drop(snap);
    }

    /// A node starting on a table other nodes use must not take a lock that waits for their
    /// open transactions: every later query on the table would queue behind it, and a node
    /// reading through a snapshot while it writes would wait for itself (found with a node
    /// started while another wrote: its updates stalled until the 60 s answer wait).
    #[test]
    fn a_store_opens_while_another_holds_a_snapshot_of_the_same_table() {
        let options = test_options("reopen", 1);
        let store = PgStore::open(&options).unwrap_or_else(|e| panic!("{e}"));
        let mut batch = Batch::new();
        batch.put(Keyspace::Records, b"a".to_vec(), b"1".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let snap = store.snapshot();
        assert!(snap.get(Keyspace::Records, b"a").is_ok_and(|v| v.is_some()));
        let other = PgStore::open(&options).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            other
                .get(Keyspace::Records, b"a")
                .unwrap_or_else(|e| panic!("{e}")),
            Some(b"1".to_vec())
        );
        let mut batch = Batch::new();
        batch.put(Keyspace::Records, b"b".to_vec(), b"2".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        drop(snap);
    }

    /// Nodes started together on a new schema all open it: one creates the table, the others
    /// find it.
    #[test]
    fn stores_opened_together_on_a_new_schema_all_open() {
        let options = test_options("together", 1);
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let options = options.clone();
                std::thread::spawn(move || PgStore::open(&options).map(|_| ()))
            })
            .collect();
        for open in opens {
            let opened = open.join().unwrap_or_else(|_| panic!("an open panicked"));
            opened.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// With `ca_file`, every connection is TLS, verified against the CA: the test cluster
    /// offers TLS with a certificate for 127.0.0.1 from its own CA.
    #[test]
    fn a_store_with_a_ca_file_talks_tls_to_the_database() {
        let mut options = test_options("tls", 1);
        options.ca_file = Some(
            std::env::var("STRONGROOM_TEST_PG_CA")
                .unwrap_or_else(|_| panic!("STRONGROOM_TEST_PG_CA is not set: run `make test`"))
                .into(),
        );
        let store = PgStore::open(&options).unwrap_or_else(|e| panic!("{e}"));
        let mut batch = Batch::new();
        batch.put(Keyspace::Records, b"a".to_vec(), b"1".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let snap = store.snapshot();
        assert!(snap.get(Keyspace::Records, b"a").is_ok_and(|v| v.is_some()));
        // Its connection goes back to the snapshots' pool of one, to be asked below.
        drop(snap);
        let tls = |pool: Pool| async move {
            let client = pool.get().await.map_err(|e| pool_error(&e))?;
            let row = client
                .query_one(
                    "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| pg(&e))?;
            Ok((row.get::<_, bool>(0), row.get::<_, Option<String>>(1)))
        };
        for pool in [store.pool.clone(), store.snapshots.clone()] {
            let (ssl, version) = store.block_on(tls(pool)).unwrap_or_else(|e| panic!("{e}"));
            assert!(ssl, "a connection of the store is not TLS");
            assert!(version.is_some_and(|v| v.starts_with("TLSv1.")));
        }
    }

    /// The message of `PgStore::open`'s error for `options` ("" if it opened).
    fn open_error_of(options: &PgOptions) -> String {
        PgStore::open(options)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// A CA of our own (`strongroom tls init`), not the test cluster's: its dir and `ca.pem`.
    fn another_ca() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        crate::tls::init(&crate::tls::InitOptions {
            dir: dir.path().to_path_buf(),
            names: vec!["127.0.0.1".into()],
            clients: vec![],
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let ca_file = dir.path().join("ca.pem");
        (dir, ca_file)
    }

    /// A database whose certificate does not chain to `ca_file` is refused.
    #[test]
    fn a_database_certificate_from_another_ca_is_refused() {
        let mut options = test_options("othertls", 1);
        let (_dir, ca_file) = another_ca();
        options.ca_file = Some(ca_file);
        let err = open_error_of(&options);
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    /// With `ca_file` set, a server (or a man in the middle) that answers the TLS request with
    /// "no TLS" gets no plaintext connection, even from a URL that says `sslmode=disable`; and
    /// a URL that asks for TLS without a CA to verify it against is refused.
    #[test]
    fn a_ca_file_refuses_a_server_without_tls_and_sslmode_require_needs_one() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
            let mut request = [0u8; 8];
            conn.read_exact(&mut request)
                .unwrap_or_else(|e| panic!("{e}"));
            conn.write_all(b"N").unwrap_or_else(|e| panic!("{e}"));
            // Whatever the client sends after "no TLS" (a plaintext startup would name the
            // user and the database), until it hangs up.
            let mut after = Vec::new();
            let _ = conn.read_to_end(&mut after);
            (request, after)
        });
        let (_dir, ca_file) = another_ca();
        let options = PgOptions {
            url: format!(
                "postgres://vault@127.0.0.1:{port}/data?sslmode=disable&connect_timeout=5"
            ),
            schema: "s".into(),
            pool_size: 1,
            ca_file: Some(ca_file),
        };
        assert!(PgStore::open(&options).is_err());
        let (request, after) = server
            .join()
            .unwrap_or_else(|_| panic!("the server panicked"));
        // The SSLRequest: length 8, code 80877103.
        assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        assert!(
            after.is_empty(),
            "sent in plaintext after a refused TLS: {after:?}"
        );

        let options = PgOptions {
            url: "postgres://vault:pw@127.0.0.1:1/data?sslmode=require".into(),
            schema: "s".into(),
            pool_size: 1,
            ca_file: None,
        };
        let err = open_error_of(&options);
        assert!(err.contains("postgres.ca_file"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn urls_name_their_database_and_hide_their_credentials() {
        let url = "postgres://vault:pw@h1:5432,h2:5433/data?target_session_attrs=read-write";
        assert_eq!(pg_database(url).as_deref(), Ok("data"));
        assert_eq!(
            pg_with_database(url, "data_keys").as_deref(),
            Ok("postgres://vault:pw@h1:5432,h2:5433/data_keys?target_session_attrs=read-write")
        );
        assert_eq!(
            redacted(url),
            "postgres://h1:5432,h2:5433/data?target_session_attrs=read-write"
        );
        assert_eq!(pg_database("postgresql://h/db").as_deref(), Ok("db"));
        // A password may hold `/`, `?` and `@`-free text of any kind.
        let odd = "postgres://vault:p/w?x@h1/data?connect_timeout=2";
        assert_eq!(pg_database(odd).as_deref(), Ok("data"));
        assert_eq!(
            pg_with_database(odd, "data_keys").as_deref(),
            Ok("postgres://vault:p/w?x@h1/data_keys?connect_timeout=2")
        );
        assert_eq!(redacted(odd), "postgres://h1/data?connect_timeout=2");
        for bad in [
            "postgres://h1:5432",
            "postgres://h1/",
            "postgres://h1/?x=1",
            "http://h/db",
            "postgres://h/d;b",
        ] {
            assert!(pg_database(bad).is_err(), "{bad}");
        }
        assert!(valid_schema("strongroom_2"));
        for bad in ["", "2x", "Strong", "a-b", "a b", &"x".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
        let options = PgOptions {
            url: url.into(),
            schema: "s".into(),
            pool_size: 1,
            ca_file: None,
        };
        assert!(!format!("{options:?}").contains("pw"));
    }

    #[test]
    fn an_unreachable_database_fails_the_open_naming_it_without_credentials() {
        let options = PgOptions {
            // A port nothing listens on.
            url: "postgres://vault:pw@127.0.0.1:1/data?connect_timeout=2".into(),
            schema: "s".into(),
            pool_size: 1,
            ca_file: None,
        };
        let err = open_error_of(&options);
        assert!(err.contains("postgres://127.0.0.1:1/data"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }
}
