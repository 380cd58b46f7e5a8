//! Configuration: an optional TOML file (unknown keys are an error) overridden by command-line
//! flags, validated into a `Config`. Secrets are referenced by file path, never inlined.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    domain::{Role, Subject},
    vault::{
        Limits,
        limits::{LimitRule, SubjectLimits},
    },
};

/// The validated configuration of `strongroom serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (RocksDB: records, wrapped data keys, index, audit, policies, tokens).
    pub data_dir: PathBuf,
    /// Keys directory (the keyring and the key store of wrapped data keys), never inside the
    /// data dir: a copy of the data dir must not carry the keys that decrypt it.
    pub keys_dir: PathBuf,
    /// Directory holding `model.conf`, `policy.csv` and `schema.toml`.
    pub policies_dir: PathBuf,
    /// The keyring file (by default `keyring` in the keys dir; never in the data dir). Not
    /// created nor read with `[pkcs11]`.
    pub keyring_file: PathBuf,
    /// Seal the keyring file under the 64 hex digits in this environment variable (the `env`
    /// provider, for containers).
    pub master_key_env: Option<String>,
    /// The HSM holding the epoch keys and the signing key (the `pkcs11` provider), from the
    /// `[pkcs11]` table: `module` (absolute path of the vendor's PKCS#11 library),
    /// `token_label`, and `pin_file` (the user PIN, in a file of mode 0600; never inline).
    /// Setting it selects the provider; it excludes `master_key_env` and `keyring_file`.
    /// `None`: the keyring file (`file`, or `env` with `master_key_env`).
    pub pkcs11: Option<crate::crypto::Pkcs11Config>,
    /// Key rotation: the shred horizon and the rewrap rate.
    pub rotation: crate::vault::rotation::RotationOptions,
    /// Per-request limits.
    pub limits: Limits,
    /// Per-subject limits (`[rate_limits]`): requests per second, and plaintext disclosures
    /// of sensitive fields per hour, by subject, role, or `default`; none by default.
    pub rate_limits: SubjectLimits,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Most concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Limits on connections and request time.
    pub transport: Transport,
    /// Audit log settings (retention, checkpoint interval).
    pub audit: crate::audit::AuditOptions,
    /// Settings of the embedded stores (data and key store), such as their block cache.
    pub store: crate::storage::RocksOptions,
    /// The data store and the key store on PostgreSQL instead of the embedded RocksDB (the
    /// `[postgres]` table, or `serve --store postgres://...`): several vault nodes can share
    /// them. `None`: RocksDB in the data dir and the keys dir.
    pub postgres: Option<Postgres>,
    /// Do not audit reads. Not a config file key: only `strongroom bench` sets it (through a
    /// hidden flag of `serve`) on the throwaway vault it starts to measure what auditing costs.
    /// A start with it set is recorded in the audit log, warned about, and shown by health.
    pub danger_disable_read_audit: bool,
    /// TLS on the listener (`tls_cert_file`, `tls_key_file`), and mTLS with `client_ca_file`.
    /// `None`: plaintext, allowed on a loopback address only.
    pub tls: Option<Tls>,
    /// The clock tokens expire and limit windows turn by. Not a config file key: always the
    /// system clock, except in tests, which set a manual one to move time without sleeping.
    pub clock: crate::domain::Clock,
    /// The longest lifetime of a `vendor:` subject's token (`max_vendor_token_hours`, default
    /// 168: a week); such tokens must expire.
    pub max_vendor_token_lifetime: Duration,
    /// How often the retention sweeper runs (`[retention] sweep_interval`, default 1h).
    pub sweep_interval: Duration,
}

/// The PostgreSQL stores: the data store and the key store, each in a database of its own, so
/// that a backup of the data database holds no data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Postgres {
    /// The data store.
    pub data: crate::storage::PgOptions,
    /// The key store (wrapped data keys, epoch times).
    pub keys: crate::storage::PgOptions,
}

/// The `[postgres]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresFile {
    url: Option<String>,
    keys_url: Option<String>,
    schema: Option<String>,
    pool_size: Option<usize>,
    ca_file: Option<PathBuf>,
}

/// The schema both stores use unless `[postgres] schema` says otherwise.
pub const DEFAULT_PG_SCHEMA: &str = "strongroom";

/// The `[postgres]` table (its `url` possibly from `--store`) checked: two URLs naming two
/// different databases (the key store's defaults to the data database's name + `_keys`), a
/// plain schema name, a pool size.
fn postgres(file: PostgresFile, url: Option<String>) -> Result<Option<Postgres>, String> {
    let Some(url) = url.or(file.url) else {
        if file.keys_url.is_some()
            || file.schema.is_some()
            || file.pool_size.is_some()
            || file.ca_file.is_some()
        {
            return Err("postgres.url: missing; the other [postgres] keys need it".into());
        }
        return Ok(None);
    };
    let data_db = crate::storage::pg_database(&url).map_err(|e| format!("postgres.url: {e}"))?;
    let keys_url = match file.keys_url {
        Some(keys) => keys,
        None => crate::storage::pg_with_database(&url, &format!("{data_db}_keys"))
            .map_err(|e| format!("postgres.url: {e}"))?,
    };
    let keys_db =
        crate::storage::pg_database(&keys_url).map_err(|e| format!("postgres.keys_url: {e}"))?;
    if keys_db == data_db && crate::storage::redacted(&keys_url) == crate::storage::redacted(&url) {
        return Err(format!(
            "postgres.keys_url: names the data database ({data_db}); the key store must be in \
             a database of its own, so that a backup of the data holds no data key"
        ));
    }
    let schema = file.schema.unwrap_or_else(|| DEFAULT_PG_SCHEMA.to_owned());
    if !crate::storage::valid_schema(&schema) {
        return Err(
            "postgres.schema: must be a lowercase letter or _, then lowercase letters, digits \
             and _, at most 63"
                .into(),
        );
    }
    let pool_size = file.pool_size.unwrap_or(16);
    if !(1..=1000).contains(&pool_size) {
        return Err("postgres.pool_size: must be between 1 and 1000".into());
    }
    let options = |url: String| crate::storage::PgOptions {
        url,
        schema: schema.clone(),
        pool_size,
        ca_file: file.ca_file.clone(),
    };
    Ok(Some(Postgres {
        data: options(url),
        keys: options(keys_url),
    }))
}

/// TLS settings of the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The server's certificate chain (PEM), from `tls_cert_file`.
    pub cert_file: PathBuf,
    /// The server's private key (PEM; a file of ours, mode 0600), from `tls_key_file`.
    pub key_file: PathBuf,
    /// With mTLS: the CA (PEM) client certificates must chain to, from `client_ca_file`. Every
    /// call but health then needs a client certificate whose identity is the token's subject.
    pub client_ca_file: Option<PathBuf>,
    /// How client certificate identities map to subjects (`[tls_identities]`, exact URI ->
    /// subject, over the default `spiffe://DOMAIN/NAMESPACE/NAME` -> `NAMESPACE:NAME`).
    pub identities: crate::tls::Identities,
}

/// Limits on what one connection and one request may hold, so that a caller (authenticated or
/// not) cannot pin the server's memory, tasks or sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// Connections served at once; a new one waits (in the kernel's accept backlog) until
    /// another closes, so a connection flood costs bounded file descriptors and memory.
    pub max_connections: usize,
    /// Requests of one connection handled at once; more wait their turn.
    pub max_requests_per_connection: usize,
    /// How long a request may take until its response starts (streams then run on).
    pub request_timeout: Duration,
    /// Idle connections are pinged this often...
    pub http2_keepalive_interval: Duration,
    /// ...and closed when a ping is not answered within this.
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive on accepted sockets, so dead peers are found.
    pub tcp_keepalive: Duration,
    /// Largest header list (path and metadata, HPACK-decoded) a request may carry; a larger one
    /// is refused by HTTP/2 before any service sees it.
    pub max_header_list_bytes: u32,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_requests_per_connection: 64,
            request_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            max_header_list_bytes: 8192,
        }
    }
}

/// The TOML file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    keys_dir: Option<PathBuf>,
    policies_dir: Option<PathBuf>,
    keyring_file: Option<PathBuf>,
    master_key_env: Option<String>,
    shred_horizon_hours: Option<u64>,
    rewrap_per_second: Option<u32>,
    max_value_bytes: Option<usize>,
    max_fields: Option<usize>,
    max_batch: Option<usize>,
    block_cache_mib: Option<usize>,
    max_message_bytes: Option<usize>,
    max_concurrent_streams: Option<u32>,
    max_requests_per_connection: Option<usize>,
    max_connections: Option<usize>,
    request_timeout_secs: Option<u64>,
    http2_keepalive_interval_secs: Option<u64>,
    http2_keepalive_timeout_secs: Option<u64>,
    tcp_keepalive_secs: Option<u64>,
    max_header_list_bytes: Option<u32>,
    audit_retention_days: Option<u32>,
    audit_checkpoint_every: Option<u64>,
    audit_log: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    tls_identities: Option<std::collections::BTreeMap<String, String>>,
    max_vendor_token_hours: Option<u64>,
    pkcs11: Option<Pkcs11File>,
    rate_limits: Option<std::collections::BTreeMap<String, RateLimitFile>>,
    retention: Option<RetentionFile>,
    postgres: Option<PostgresFile>,
}

/// The `[retention]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    sweep_interval: Option<String>,
}

/// The shortest and longest `[retention] sweep_interval`.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The `[retention]` table checked: the sweep interval a length of time from a minute to a week.
fn sweep_interval(file: Option<RetentionFile>) -> Result<Duration, String> {
    let Some(text) = file.and_then(|f| f.sweep_interval) else {
        return Ok(crate::vault::retention::DEFAULT_SWEEP_INTERVAL);
    };
    let interval =
        crate::domain::parse_duration(&text, "retention.sweep_interval", MAX_SWEEP_INTERVAL)
            .map_err(|e| e.to_string())?;
    if interval < MIN_SWEEP_INTERVAL {
        return Err(format!(
            "retention.sweep_interval: must be at least {}",
            crate::domain::friendly(MIN_SWEEP_INTERVAL)
        ));
    }
    Ok(interval)
}

/// One entry of the `[rate_limits]` table (`[rate_limits."role:support"]`), as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    requests_per_second: Option<u32>,
    sensitive_disclosures_per_hour: Option<u32>,
}

/// The highest `requests_per_second` accepted.
const MAX_REQUESTS_PER_SECOND: u32 = 1_000_000;
/// The highest `sensitive_disclosures_per_hour` accepted.
const MAX_DISCLOSURES_PER_HOUR: u32 = 1_000_000_000;

/// The `[rate_limits]` table checked: each entry `default`, a role or a subject, setting at
/// least one limit, each limit within its range.
fn rate_limits(
    table: std::collections::BTreeMap<String, RateLimitFile>,
) -> Result<SubjectLimits, String> {
    let mut limits = SubjectLimits::default();
    for (name, entry) in table {
        let RateLimitFile {
            requests_per_second,
            sensitive_disclosures_per_hour,
        } = entry;
        let at = format!("rate_limits.{name:?}");
        if requests_per_second.is_none() && sensitive_disclosures_per_hour.is_none() {
            return Err(format!(
                "{at}: sets no limit; give requests_per_second or \
                 sensitive_disclosures_per_hour (or remove the entry)"
            ));
        }
        for (key, value, max) in [
            (
                "requests_per_second",
                requests_per_second,
                MAX_REQUESTS_PER_SECOND,
            ),
            (
                "sensitive_disclosures_per_hour",
                sensitive_disclosures_per_hour,
                MAX_DISCLOSURES_PER_HOUR,
            ),
        ] {
            if value.is_some_and(|v| !(1..=max).contains(&v)) {
                return Err(format!(
                    "{at}.{key}: must be between 1 and {max} (leave it out for no limit)"
                ));
            }
        }
        let rule = LimitRule {
            requests_per_second,
            sensitive_disclosures_per_hour,
        };
        if name == "default" {
            limits.default = Some(rule);
        } else if name.starts_with("role:") {
            let role = Role::parse(&name, &at).map_err(|e| e.to_string())?;
            limits.roles.insert(role, rule);
        } else {
            let subject = Subject::parse(&name, &at).map_err(|_| {
                format!(
                    "{at}: not `default`, a role (role:NAME) or a subject (svc:NAME, \
                     user:NAME, app:NAME, vendor:NAME)"
                )
            })?;
            limits.subjects.insert(subject, rule);
        }
    }
    Ok(limits)
}

/// The `[pkcs11]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pkcs11File {
    module: Option<PathBuf>,
    token_label: Option<String>,
    pin_file: Option<PathBuf>,
    /// Only to refuse an inline PIN by name; its value is never kept.
    pin: Option<serde::de::IgnoredAny>,
}

/// The longest token label PKCS#11 stores (`CK_TOKEN_INFO.label`, 32 bytes, blank padded).
const MAX_TOKEN_LABEL_BYTES: usize = 32;

/// The `[pkcs11]` table checked into a provider config: every key set, the module an absolute
/// path, the label one a token can have, the PIN in a file outside the data dir.
fn pkcs11(file: Pkcs11File, data_dir: &Path) -> Result<crate::crypto::Pkcs11Config, String> {
    let Pkcs11File {
        module,
        token_label,
        pin_file,
        pin,
    } = file;
    if pin.is_some() {
        return Err(
            "pkcs11.pin: the PIN is never written in the config; put it in a file of \
                    mode 0600 and set pkcs11.pin_file to its path"
                .into(),
        );
    }
    let module = module.ok_or(
        "pkcs11.module: missing; set it to the path of the HSM's PKCS#11 library (for \
         SoftHSM2, e.g. /usr/lib/softhsm/libsofthsm2.so)",
    )?;
    if !module.is_absolute() {
        return Err(format!(
            "pkcs11.module: {} is not an absolute path; a bare or relative name would be looked \
             up on the library search path, so give the library's full path",
            module.display()
        ));
    }
    let token_label = token_label.ok_or(
        "pkcs11.token_label: missing; set it to the label of the token holding the vault's keys",
    )?;
    if token_label.trim().is_empty()
        || token_label.len() > MAX_TOKEN_LABEL_BYTES
        || token_label.trim_end() != token_label
    {
        return Err(format!(
            "pkcs11.token_label: {token_label:?} is not a token label (1 to \
             {MAX_TOKEN_LABEL_BYTES} bytes, no trailing blanks)"
        ));
    }
    let pin_file = pin_file.ok_or(
        "pkcs11.pin_file: missing; set it to a file (mode 0600) holding the token's user PIN",
    )?;
    if crate::files::is_within(&pin_file, data_dir)? {
        return Err(format!(
            "pkcs11.pin_file: {} is inside the data dir {}: a copy of the data dir would carry \
             the PIN; keep it apart from the data",
            pin_file.display(),
            data_dir.display()
        ));
    }
    Ok(crate::crypto::Pkcs11Config {
        module,
        token_label,
        pin_file,
    })
}

/// The TLS keys of the file checked into a `Tls`: both files or neither, mTLS and identity
/// mappings only with TLS, each mapping onto a subject, the key outside the data dir.
fn tls(
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    identities: Option<std::collections::BTreeMap<String, String>>,
    data_dir: &Path,
) -> Result<Option<Tls>, String> {
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if client_ca_file.is_some() {
                return Err("client_ca_file: client certificates are checked by TLS; set tls_cert_file and tls_key_file too"
                    .into());
            }
            if identities.is_some() {
                return Err(
                    "tls_identities: maps client certificates, which need client_ca_file and TLS"
                        .into(),
                );
            }
            return Ok(None);
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err("tls_cert_file and tls_key_file: set both (the server's certificate and its private key, PEM; `strongroom tls init` writes them) or neither"
                .into());
        }
    };
    if crate::files::is_within(&key_file, data_dir)? {
        return Err(format!(
            "tls_key_file: {} is inside the data dir {}: a copy of the data dir would carry the server's private key; keep it apart from the data",
            key_file.display(),
            data_dir.display()
        ));
    }
    if identities.is_some() && client_ca_file.is_none() {
        return Err("tls_identities: maps client certificates, which need client_ca_file".into());
    }
    let mut exact = std::collections::BTreeMap::new();
    for (uri, subject) in identities.unwrap_or_default() {
        if uri.is_empty() || uri.contains(char::is_whitespace) || !uri.contains(':') {
            return Err(format!(
                "tls_identities: {uri:?} is not a URI (a client certificate's SAN URI, e.g. spiffe://example/svc/crm)"
            ));
        }
        let parsed = crate::domain::Subject::parse(&subject, "tls_identities").map_err(|_| {
            format!(
                "tls_identities: {uri:?} maps to {subject:?}, which is not a subject (svc:NAME, user:NAME, app:NAME or vendor:NAME, lowercase)"
            )
        })?;
        exact.insert(uri, parsed);
    }
    Ok(Some(Tls {
        cert_file,
        key_file,
        client_ca_file,
        identities: crate::tls::Identities::new(exact),
    }))
}

/// Values from the command line, which win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--keys-dir`.
    pub keys_dir: Option<PathBuf>,
    /// `--policies`.
    pub policies_dir: Option<PathBuf>,
    /// `--store postgres://...`: `[postgres] url`.
    pub store_url: Option<String>,
}

/// The keys dir next to a data dir: `strongroom-data` -> `strongroom-keys`, `data` -> `keys`,
/// anything else `<name>-keys`.
///
/// # Errors
/// A message if the data dir has no name to derive one from (e.g. `/`): set `keys_dir`.
pub fn default_keys_dir(data_dir: &Path) -> Result<PathBuf, String> {
    let absolute = crate::files::lexical_absolute(data_dir)?;
    let name = absolute
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            format!(
                "keys_dir: cannot derive a keys dir from the data dir {}; set keys_dir",
                data_dir.display()
            )
        })?;
    let keys = match name.strip_suffix("data") {
        Some(stem) => format!("{stem}keys"),
        None => format!("{name}-keys"),
    };
    // Next to the data dir as it was given (relative stays relative, for messages).
    Ok(match data_dir.parent() {
        Some(parent) if data_dir.file_name().is_some() => parent.join(keys),
        Some(_) | None => absolute.with_file_name(keys),
    })
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

impl ConfigFile {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// A message naming the file and the problem (unknown keys included).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

/// The transport limits of `file`, defaults filled in, each checked against its range.
fn transport(file: &ConfigFile) -> Result<Transport, String> {
    let defaults = Transport::default();
    let secs = |value: Option<u64>, default: Duration, name: &str| {
        let secs = value.unwrap_or(default.as_secs());
        if (1..=86_400).contains(&secs) {
            Ok(Duration::from_secs(secs))
        } else {
            Err(format!("{name}: must be between 1 and 86400 seconds"))
        }
    };
    let max_requests_per_connection = file
        .max_requests_per_connection
        .unwrap_or(defaults.max_requests_per_connection);
    if !(1..=100_000).contains(&max_requests_per_connection) {
        return Err("max_requests_per_connection: must be between 1 and 100000".into());
    }
    let max_connections = file.max_connections.unwrap_or(defaults.max_connections);
    if !(1..=100_000).contains(&max_connections) {
        return Err("max_connections: must be between 1 and 100000".into());
    }
    let max_header_list_bytes = file
        .max_header_list_bytes
        .unwrap_or(defaults.max_header_list_bytes);
    if !(1024..=1 << 20).contains(&max_header_list_bytes) {
        return Err("max_header_list_bytes: must be between 1024 and 1048576".into());
    }
    Ok(Transport {
        max_connections,
        max_requests_per_connection,
        request_timeout: secs(
            file.request_timeout_secs,
            defaults.request_timeout,
            "request_timeout_secs",
        )?,
        http2_keepalive_interval: secs(
            file.http2_keepalive_interval_secs,
            defaults.http2_keepalive_interval,
            "http2_keepalive_interval_secs",
        )?,
        http2_keepalive_timeout: secs(
            file.http2_keepalive_timeout_secs,
            defaults.http2_keepalive_timeout,
            "http2_keepalive_timeout_secs",
        )?,
        tcp_keepalive: secs(
            file.tcp_keepalive_secs,
            defaults.tcp_keepalive,
            "tcp_keepalive_secs",
        )?,
        max_header_list_bytes,
    })
}

impl Config {
    /// Merges the file and the overrides, applies defaults, and validates.
    ///
    /// # Errors
    /// A message naming the setting that is invalid.
    pub fn resolve(file: ConfigFile, over: Overrides) -> Result<Self, String> {
        let transport = transport(&file)?;
        let postgres = postgres(file.postgres.unwrap_or_default(), over.store_url)?;
        let sweep_interval = sweep_interval(file.retention)?;
        let rate_limits = rate_limits(file.rate_limits.unwrap_or_default())?;
        let listen_text = over
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            format!("listen: {listen_text:?} is not an address like 127.0.0.1:7700")
        })?;
        let data_dir = over
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("strongroom-data"));
        let policies_dir = over
            .policies_dir
            .or(file.policies_dir)
            .unwrap_or_else(|| PathBuf::from("policies"));
        let keys_dir = match over.keys_dir.or(file.keys_dir) {
            Some(dir) => dir,
            None => default_keys_dir(&data_dir)?,
        };
        let pkcs11 = match file.pkcs11 {
            Some(_) if file.master_key_env.is_some() => {
                return Err(
                    "master_key_env and [pkcs11]: both set, but they name two key \
                            providers (a keyring sealed under an environment key, an HSM); \
                            keep one"
                        .into(),
                );
            }
            Some(_) if file.keyring_file.is_some() => {
                return Err(
                    "keyring_file and [pkcs11]: both set, but with [pkcs11] the keys \
                            are in the HSM and there is no keyring file; remove keyring_file"
                        .into(),
                );
            }
            Some(table) => Some(pkcs11(table, &data_dir)?),
            None => None,
        };
        let tls = tls(
            file.tls_cert_file,
            file.tls_key_file,
            file.client_ca_file,
            file.tls_identities,
            &data_dir,
        )?;
        let keyring_file = file
            .keyring_file
            .unwrap_or_else(|| crate::crypto::default_keyring_path(&keys_dir));
        if crate::files::is_within(&keys_dir, &data_dir)? {
            return Err(format!(
                "keys_dir: {} is inside the data dir {}: a copy of the data dir would carry \
                 the key that decrypts it; choose a directory outside it",
                keys_dir.display(),
                data_dir.display()
            ));
        }
        if crate::files::is_within(&keyring_file, &data_dir)? {
            return Err(format!(
                "keyring_file: {} is inside the data dir {}: keep the keys apart from the data \
                 (by default it is {} in the keys dir)",
                keyring_file.display(),
                data_dir.display(),
                crate::crypto::KEYRING_FILE_NAME
            ));
        }
        let horizon_hours = file.shred_horizon_hours.unwrap_or(24);
        if !(1..=24 * 366).contains(&horizon_hours) {
            return Err("shred_horizon_hours: must be between 1 and 8784 (a year)".into());
        }
        let rewrap_per_second = file.rewrap_per_second.unwrap_or(20_000);
        if rewrap_per_second == 0 {
            return Err("rewrap_per_second: must be at least 1".into());
        }
        let rotation = crate::vault::rotation::RotationOptions {
            shred_horizon: Duration::from_secs(horizon_hours * 3600),
            rewrap_per_second,
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_value_bytes: file.max_value_bytes.unwrap_or(defaults.max_value_bytes),
            max_fields: file.max_fields.unwrap_or(defaults.max_fields),
            max_batch: file.max_batch.unwrap_or(defaults.max_batch),
        };
        let max_message_bytes = file.max_message_bytes.unwrap_or(1 << 20);
        let max_concurrent_streams = file.max_concurrent_streams.unwrap_or(256);
        if !(1..=1 << 20).contains(&limits.max_value_bytes) {
            return Err("max_value_bytes: must be between 1 and 1048576".into());
        }
        if !(1..=10_000).contains(&limits.max_fields) {
            return Err("max_fields: must be between 1 and 10000".into());
        }
        if !(1..=10_000).contains(&limits.max_batch) {
            return Err("max_batch: must be between 1 and 10000".into());
        }
        if !(1024..=64 << 20).contains(&max_message_bytes) {
            return Err("max_message_bytes: must be between 1024 and 67108864".into());
        }
        if max_concurrent_streams == 0 {
            return Err("max_concurrent_streams: must be at least 1".into());
        }
        let block_cache_mib = file
            .block_cache_mib
            .unwrap_or(crate::storage::RocksOptions::default().block_cache_bytes >> 20);
        if !(8..=1 << 20).contains(&block_cache_mib) {
            return Err("block_cache_mib: must be between 8 and 1048576".into());
        }
        let store = crate::storage::RocksOptions {
            block_cache_bytes: block_cache_mib << 20,
        };
        let in_store = match file.audit_log.as_deref() {
            // Every node of a shared database appends to the one chain in it.
            None if postgres.is_some() => true,
            Some("segments") if postgres.is_some() => {
                return Err(
                    "audit_log: \"segments\" are files of one node; with [postgres] the audit \
                     log is kept in the database (\"store\"), one chain for every node"
                        .into(),
                );
            }
            None | Some("segments") => false,
            Some("store") => true,
            Some(_) => return Err("audit_log: must be \"segments\" or \"store\"".into()),
        };
        let audit = crate::audit::AuditOptions {
            retention_days: file.audit_retention_days,
            checkpoint_every: file.audit_checkpoint_every.unwrap_or(1000),
            in_store,
            ..crate::audit::AuditOptions::default()
        };
        if audit.retention_days == Some(0) || audit.checkpoint_every == 0 {
            return Err(
                "audit_retention_days and audit_checkpoint_every: must be at least 1".into(),
            );
        }
        let vendor_hours = file.max_vendor_token_hours.unwrap_or(168);
        if !(1..=24 * 366).contains(&vendor_hours) {
            return Err("max_vendor_token_hours: must be between 1 and 8784 (a year)".into());
        }
        let config = Self {
            listen,
            tls,
            audit,
            store,
            postgres,
            max_vendor_token_lifetime: Duration::from_secs(vendor_hours * 3600),
            sweep_interval,
            danger_disable_read_audit: false,
            clock: crate::domain::Clock::system(),
            data_dir,
            keys_dir,
            policies_dir,
            keyring_file,
            master_key_env: file.master_key_env,
            pkcs11,
            rotation,
            limits,
            rate_limits,
            max_message_bytes,
            max_concurrent_streams,
            transport,
        };
        config.check_listener()?;
        Ok(config)
    }

    /// Refuses plaintext on an address other machines can reach: bearer tokens and customer
    /// data would cross the network in the clear. Loopback may stay plaintext.
    ///
    /// # Errors
    /// A message saying why, and what to set.
    pub fn check_listener(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.listen.ip().to_canonical().is_loopback() {
            return Err(format!(
                "listen: {} is not a loopback address and TLS is off: bearer tokens and customer data would cross the network in the clear. Set tls_cert_file and tls_key_file (`strongroom tls init DIR` writes a CA and certificates), or listen on 127.0.0.1",
                self.listen
            ));
        }
        Ok(())
    }

    /// Reads a config file's text with `overrides` (used by tests and bench).
    ///
    /// # Errors
    /// As `resolve`, and TOML errors.
    pub fn from_toml(text: &str, over: Overrides) -> Result<Self, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Self::resolve(file, over)
    }

    /// The defaults with a data dir, listen address and policies dir (used by tests and bench).
    ///
    /// # Errors
    /// As `resolve`.
    pub fn with(data_dir: &Path, listen: &str, policies_dir: &Path) -> Result<Self, String> {
        Self::resolve(
            ConfigFile::default(),
            Overrides {
                listen: Some(listen.to_owned()),
                data_dir: Some(data_dir.to_owned()),
                keys_dir: None,
                policies_dir: Some(policies_dir.to_owned()),
                store_url: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_puts_the_key_store_in_a_database_of_its_own_and_the_audit_log_in_the_store() {
        let config = |text: &str| {
            Config::from_toml(
                text,
                Overrides {
                    data_dir: Some(PathBuf::from("/tmp/x/data")),
                    ..Overrides::default()
                },
            )
        };
        let url = "postgres://vault:secret@db1:5432,db2:5432/vault?target_session_attrs=read-write";
        let pg = config(&format!("[postgres]\nurl = {url:?}\n")).unwrap_or_else(|e| panic!("{e}"));
        let stores = pg.postgres.as_ref().unwrap_or_else(|| panic!("postgres"));
        assert_eq!(
            stores.keys.url,
            "postgres://vault:secret@db1:5432,db2:5432/vault_keys?target_session_attrs=read-write"
        );
        assert_eq!(stores.data.schema, DEFAULT_PG_SCHEMA);
        assert_eq!(stores.data.ca_file, None);
        // TLS covers the key store as much as the data.
        let tls = config(&format!(
            "[postgres]\nurl = {url:?}\nca_file = \"/etc/db-ca.pem\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let stores_tls = tls.postgres.as_ref().unwrap_or_else(|| panic!("postgres"));
        for store in [&stores_tls.data, &stores_tls.keys] {
            assert_eq!(store.ca_file, Some(PathBuf::from("/etc/db-ca.pem")));
        }
        assert!(pg.audit.in_store, "one chain in the database");
        assert!(
            !format!("{pg:?}").contains("secret"),
            "the password never reaches Debug"
        );
        assert!(
            config("")
                .unwrap_or_else(|e| panic!("{e}"))
                .postgres
                .is_none()
        );
        for (text, named) in [
            (
                format!("[postgres]\nurl = {url:?}\nkeys_url = {url:?}\n"),
                "postgres.keys_url",
            ),
            (
                format!("[postgres]\nurl = {url:?}\nschema = \"Bad-Name\"\n"),
                "postgres.schema",
            ),
            (
                format!("[postgres]\nurl = {url:?}\npool_size = 0\n"),
                "postgres.pool_size",
            ),
            (
                "[postgres]\nurl = \"postgres://db1:5432\"\n".into(),
                "postgres.url",
            ),
            (
                "[postgres]\nurl = \"mysql://db1/x\"\n".into(),
                "postgres.url",
            ),
            ("[postgres]\nschema = \"x\"\n".into(), "postgres.url"),
            ("[postgres]\nca_file = \"/x.pem\"\n".into(), "postgres.url"),
            (
                format!("audit_log = \"segments\"\n[postgres]\nurl = {url:?}\n"),
                "audit_log",
            ),
        ] {
            let err = config(&text).err().unwrap_or_default();
            assert!(err.starts_with(named), "{text}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
        // `serve --store` sets the URL.
        let over = Overrides {
            data_dir: Some(PathBuf::from("/tmp/x/data")),
            store_url: Some(url.into()),
            ..Overrides::default()
        };
        let from_flag = Config::from_toml("", over).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_flag.postgres, pg.postgres);
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let err = toml::from_str::<ConfigFile>("listen = \"127.0.0.1:1\"\nlisten_port = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn turning_read_auditing_off_is_not_a_config_key() {
        let err = toml::from_str::<ConfigFile>("danger_disable_read_audit = true\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("danger_disable_read_audit"), "{err}");
        assert!(
            !Config::with(Path::new("d"), "127.0.0.1:1", Path::new("p"))
                .map(|c| c.danger_disable_read_audit)
                .unwrap_or(true)
        );
    }

    #[test]
    fn flags_win_and_limits_are_checked() {
        let file: ConfigFile =
            toml::from_str("listen = \"127.0.0.1:1\"\nmax_fields = 10\n").unwrap_or_default();
        let over = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Overrides::default()
        };
        let config = Config::resolve(file, over).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.limits.max_fields, 10);
        let bad: ConfigFile = toml::from_str("max_value_bytes = 0\n").unwrap_or_default();
        assert!(Config::resolve(bad, Overrides::default()).is_err());
    }

    #[test]
    fn the_block_cache_is_64_mib_unless_configured_and_is_checked() {
        let config = |text: &str| Config::from_toml(text, Overrides::default());
        assert_eq!(config("").map(|c| c.store.block_cache_bytes), Ok(64 << 20));
        assert_eq!(
            config("block_cache_mib = 256\n").map(|c| c.store.block_cache_bytes),
            Ok(256 << 20)
        );
        for bad in [0, 7, (1 << 20) + 1] {
            let err = config(&format!("block_cache_mib = {bad}\n"))
                .err()
                .unwrap_or_default();
            assert!(err.contains("block_cache_mib"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_sweep_interval_is_an_hour_unless_configured_and_is_checked() {
        let config = |text: &str| Config::from_toml(text, Overrides::default());
        assert_eq!(
            config("").map(|c| c.sweep_interval),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(
            config("[retention]\nsweep_interval = \"15m\"\n").map(|c| c.sweep_interval),
            Ok(Duration::from_secs(900))
        );
        for bad in ["\"10s\"", "\"8d\"", "\"often\"", "3"] {
            let e = config(&format!("[retention]\nsweep_interval = {bad}\n"))
                .err()
                .unwrap_or_default();
            assert!(e.contains("sweep_interval"), "{bad}: {e}");
        }
        let e = config("[retention]\nsweep_every = \"1h\"\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("sweep_every"), "{e}");
    }

    #[test]
    fn vendor_tokens_live_a_week_unless_configured() {
        let config = Config::resolve(ConfigFile::default(), Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.max_vendor_token_lifetime,
            Duration::from_secs(168 * 3600)
        );
        let config = Config::from_toml("max_vendor_token_hours = 24\n", Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.max_vendor_token_lifetime,
            Duration::from_secs(24 * 3600)
        );
        for bad in [
            "max_vendor_token_hours = 0\n",
            "max_vendor_token_hours = 9000\n",
        ] {
            let err = Config::from_toml(bad, Overrides::default()).err();
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.starts_with("max_vendor_token_hours")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn transport_limits_have_defaults_and_are_checked() {
        let config = Config::resolve(ConfigFile::default(), Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.transport, Transport::default());
        let file: ConfigFile = toml::from_str(
            "request_timeout_secs = 5\nmax_requests_per_connection = 8\nmax_connections = 16\n\
             http2_keepalive_interval_secs = 7\nhttp2_keepalive_timeout_secs = 3\n\
             tcp_keepalive_secs = 9\nmax_header_list_bytes = 4096\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = Config::resolve(file, Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.transport,
            Transport {
                max_connections: 16,
                max_requests_per_connection: 8,
                request_timeout: Duration::from_secs(5),
                http2_keepalive_interval: Duration::from_secs(7),
                http2_keepalive_timeout: Duration::from_secs(3),
                tcp_keepalive: Duration::from_secs(9),
                max_header_list_bytes: 4096,
            }
        );
        for (line, key) in [
            ("request_timeout_secs = 0", "request_timeout_secs"),
            (
                "max_requests_per_connection = 0",
                "max_requests_per_connection",
            ),
            ("max_header_list_bytes = 100", "max_header_list_bytes"),
            ("max_connections = 0", "max_connections"),
            ("tcp_keepalive_secs = 100000", "tcp_keepalive_secs"),
        ] {
            let file: ConfigFile = toml::from_str(line).unwrap_or_else(|e| panic!("{e}"));
            let err = Config::resolve(file, Overrides::default())
                .err()
                .unwrap_or_default();
            assert!(err.starts_with(key), "{line}: {err}");
        }
    }

    #[test]
    fn the_key_lives_next_to_the_data_never_inside() {
        let config = Config::resolve(ConfigFile::default(), Overrides::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.data_dir, PathBuf::from("strongroom-data"));
        assert_eq!(config.keys_dir, PathBuf::from("strongroom-keys"));
        assert_eq!(
            config.keyring_file,
            PathBuf::from("strongroom-keys/keyring")
        );
        let with = |data: &str| {
            Config::with(Path::new(data), "127.0.0.1:1", Path::new("policies"))
                .map(|c| c.keys_dir)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(with("/srv/data"), PathBuf::from("/srv/keys"));
        assert_eq!(with("/srv/vault"), PathBuf::from("/srv/vault-keys"));
        for inside in [
            "keys_dir = \"/srv/data/keys\"\n",
            "keys_dir = \"/srv/data\"\n",
            "keys_dir = \"/srv/other/../data/k\"\n",
            "keyring_file = \"/srv/data/keyring\"\n",
        ] {
            let over = Overrides {
                data_dir: Some("/srv/data".into()),
                ..Overrides::default()
            };
            let err = Config::from_toml(inside, over).err().unwrap_or_default();
            assert!(err.contains("inside the data dir"), "{inside}: {err}");
        }
    }

    #[test]
    fn plaintext_is_refused_off_loopback_and_tls_keys_are_checked() {
        let over = |listen: &str| Overrides {
            listen: Some(listen.into()),
            data_dir: Some("/srv/data".into()),
            ..Overrides::default()
        };
        let tls = "tls_cert_file = \"/etc/sr/server.pem\"\ntls_key_file = \"/etc/sr/server.key\"\n";
        for listen in ["0.0.0.0:7700", "10.0.0.5:7700", "[::]:7700"] {
            let err = Config::from_toml("", over(listen))
                .err()
                .unwrap_or_default();
            assert!(
                err.starts_with("listen:") && err.contains("TLS is off"),
                "{listen}: {err}"
            );
            let config = Config::from_toml(tls, over(listen)).unwrap_or_else(|e| panic!("{e}"));
            assert!(config.tls.is_some());
        }
        for listen in ["127.0.0.1:7700", "127.8.0.1:1", "[::1]:7700"] {
            let config = Config::from_toml("", over(listen)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.tls, None);
        }
        // A config built and then moved off loopback is refused at start too.
        let mut config =
            Config::from_toml("", over("127.0.0.1:0")).unwrap_or_else(|e| panic!("{e}"));
        config.listen = "0.0.0.0:0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(config.check_listener().is_err());

        let mtls = format!(
            "{tls}client_ca_file = \"/etc/sr/ca.pem\"\n[tls_identities]\n\
             \"urn:example:billing\" = \"app:billing\"\n"
        );
        let config =
            Config::from_toml(&mtls, over("127.0.0.1:1")).unwrap_or_else(|e| panic!("{e}"));
        let tls_config = config.tls.unwrap_or_else(|| panic!("TLS"));
        assert_eq!(tls_config.client_ca_file, Some("/etc/sr/ca.pem".into()));
        assert_eq!(
            tls_config
                .identities
                .subject_of("urn:example:billing")
                .map(|s| s.to_string()),
            Some("app:billing".into())
        );
        for (text, want) in [
            (
                "tls_cert_file = \"/etc/sr/server.pem\"\n".to_owned(),
                "tls_cert_file and tls_key_file: set both",
            ),
            (
                "client_ca_file = \"/etc/sr/ca.pem\"\n".to_owned(),
                "client_ca_file: client certificates are checked by TLS",
            ),
            (
                format!("{tls}[tls_identities]\n\"urn:x\" = \"svc:x\"\n"),
                "tls_identities: maps client certificates, which need client_ca_file",
            ),
            (
                mtls.replace("app:billing", "role:admin"),
                "which is not a subject",
            ),
            (
                tls.replace("/etc/sr/server.key", "/srv/data/server.key"),
                "tls_key_file: /srv/data/server.key is inside the data dir",
            ),
        ] {
            let err = Config::from_toml(&text, over("127.0.0.1:1"))
                .err()
                .unwrap_or_default();
            assert!(err.contains(want), "{text}: wanted {want:?} in {err:?}");
        }
    }

    #[test]
    fn tls_refusals_read_as_one_sentence() {
        // Review finding: these messages had lost their line continuations and carried runs
        // of spaces into the operator's terminal.
        let over = |listen: &str| Overrides {
            listen: Some(listen.into()),
            data_dir: Some("/srv/data".into()),
            ..Overrides::default()
        };
        let tls = "tls_cert_file = \"/etc/sr/server.pem\"\ntls_key_file = \"/etc/sr/server.key\"\n";
        let mtls = format!("{tls}client_ca_file = \"/etc/sr/ca.pem\"\n[tls_identities]\n");
        for (text, listen) in [
            (String::new(), "0.0.0.0:1"),
            (
                "client_ca_file = \"/etc/sr/ca.pem\"\n".to_owned(),
                "127.0.0.1:1",
            ),
            (
                "[tls_identities]\n\"urn:x\" = \"svc:x\"\n".to_owned(),
                "127.0.0.1:1",
            ),
            (
                "tls_cert_file = \"/etc/sr/server.pem\"\n".to_owned(),
                "127.0.0.1:1",
            ),
            (
                tls.replace("/etc/sr/server.key", "/srv/data/k"),
                "127.0.0.1:1",
            ),
            (format!("{mtls}\"nouri\" = \"svc:x\"\n"), "127.0.0.1:1"),
            (format!("{mtls}\"urn:x\" = \"role:x\"\n"), "127.0.0.1:1"),
        ] {
            let err = Config::from_toml(&text, over(listen))
                .err()
                .unwrap_or_default();
            assert!(!err.is_empty() && !err.contains("  "), "{text}: {err:?}");
        }
    }

    #[test]
    fn the_pkcs11_table_selects_the_hsm_and_each_mistake_is_named() {
        let over = || Overrides {
            data_dir: Some("/srv/data".into()),
            ..Overrides::default()
        };
        let table = "[pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\n\
                     token_label = \"vault\"\npin_file = \"/etc/sr/pin\"\n";
        let config = Config::from_toml(table, over()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.pkcs11,
            Some(crate::crypto::Pkcs11Config {
                module: "/usr/lib/softhsm/libsofthsm2.so".into(),
                token_label: "vault".into(),
                pin_file: "/etc/sr/pin".into(),
            })
        );
        assert_eq!(config.master_key_env, None);
        let none = Config::from_toml("", over()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none.pkcs11, None);

        let pin = "0913-secret-pin";
        for (text, want) in [
            (
                format!("master_key_env = \"SR_KEY\"\n{table}"),
                "master_key_env and [pkcs11]",
            ),
            (
                format!("keyring_file = \"/etc/sr/keyring\"\n{table}"),
                "keyring_file and [pkcs11]",
            ),
            (
                table.replace("module = \"/usr/lib/softhsm/libsofthsm2.so\"\n", ""),
                "pkcs11.module: missing",
            ),
            (
                table.replace("/usr/lib/softhsm/libsofthsm2.so", "libsofthsm2.so"),
                "pkcs11.module: libsofthsm2.so is not an absolute path",
            ),
            (
                table.replace("token_label = \"vault\"\n", ""),
                "pkcs11.token_label: missing",
            ),
            (
                table.replace("\"vault\"", "\"\""),
                "pkcs11.token_label: \"\" is not a token label",
            ),
            (
                table.replace("vault", &"v".repeat(33)),
                "pkcs11.token_label:",
            ),
            (
                table.replace("pin_file = \"/etc/sr/pin\"\n", ""),
                "pkcs11.pin_file: missing",
            ),
            (
                table.replace("/etc/sr/pin", "/srv/data/pin"),
                "pkcs11.pin_file: /srv/data/pin is inside the data dir",
            ),
            (
                table.replace("pin_file = \"/etc/sr/pin\"", &format!("pin = \"{pin}\"")),
                "pkcs11.pin: the PIN is never written in the config",
            ),
            (format!("{table}slot = 3\n"), "unknown field `slot`"),
        ] {
            let err = Config::from_toml(&text, over()).err().unwrap_or_default();
            assert!(err.contains(want), "{text}: wanted {want:?} in {err:?}");
            assert!(!err.contains(pin), "{err}");
        }
        // 32 bytes is the most a token label holds.
        let longest = table.replace("vault", &"v".repeat(32));
        assert!(Config::from_toml(&longest, over()).is_ok());
    }

    #[test]
    fn rate_limits_name_who_they_hold_and_each_mistake_is_named() {
        let text = "[rate_limits.default]\nrequests_per_second = 100\n\
                    [rate_limits.\"role:support\"]\nrequests_per_second = 20\n\
                    sensitive_disclosures_per_hour = 50\n\
                    [rate_limits.\"svc:crm\"]\nsensitive_disclosures_per_hour = 5000\n";
        let config =
            Config::from_toml(text, Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        let limits = &config.rate_limits;
        assert_eq!(
            limits.default,
            Some(LimitRule {
                requests_per_second: Some(100),
                sensitive_disclosures_per_hour: None,
            })
        );
        let support = Role::parse("role:support", "r").unwrap_or_else(|e| panic!("{e}"));
        let crm = Subject::parse("svc:crm", "s").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            limits
                .roles
                .get(&support)
                .and_then(|r| r.sensitive_disclosures_per_hour),
            Some(50)
        );
        assert_eq!(
            limits
                .subjects
                .get(&crm)
                .and_then(|r| r.sensitive_disclosures_per_hour),
            Some(5000)
        );
        let none = Config::from_toml("", Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none.rate_limits, SubjectLimits::default());
        for (text, want) in [
            (
                "[rate_limits.\"role:support\"]\nrequests_per_minute = 3\n",
                "unknown field `requests_per_minute`",
            ),
            (
                "[rate_limits.\"role:support\"]\n",
                "rate_limits.\"role:support\": sets no limit",
            ),
            (
                "[rate_limits.\"role:support\"]\nrequests_per_second = 0\n",
                "rate_limits.\"role:support\".requests_per_second: must be between 1",
            ),
            (
                "[rate_limits.default]\nsensitive_disclosures_per_hour = 0\n",
                "rate_limits.\"default\".sensitive_disclosures_per_hour: must be between 1",
            ),
            (
                "[rate_limits.support]\nrequests_per_second = 3\n",
                "rate_limits.\"support\": not `default`, a role",
            ),
            (
                "[rate_limits.\"role:Support\"]\nrequests_per_second = 3\n",
                "must be a namespaced role",
            ),
            ("[rate_limits]\nrequests_per_second = 3\n", "invalid type"),
        ] {
            let err = Config::from_toml(text, Overrides::default())
                .err()
                .unwrap_or_default();
            assert!(err.contains(want), "{text}: wanted {want:?} in {err:?}");
        }
    }

    #[test]
    fn fuzz_config_toml() {
        use proptest::prelude::*;
        let valid = (
            any::<u16>(),
            0usize..2_000_000,
            0usize..20_000,
            0usize..100_000_000,
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            0u64..100_000,
        )
            .prop_map(
                |(port, value, fields, message, streams, days, every, timeout)| {
                    format!(
                        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"/var/lib/sr\"\n\
                     policies_dir = \"policies\"\nkeyring_file = \"/etc/sr/key\"\n\
                     master_key_env = \"SR_KEY\"\nmax_value_bytes = {value}\n\
                     max_fields = {fields}\nmax_message_bytes = {message}\n\
                     max_concurrent_streams = {streams}\naudit_retention_days = {days}\n\
                     audit_checkpoint_every = {every}\nkeys_dir = \"/etc/sr\"\n\
                     request_timeout_secs = {timeout}\n"
                    )
                    .into_bytes()
                },
            );
        let dict = &[
            "=",
            "\"",
            "'",
            "'''",
            "\"\"\"",
            "[",
            "]",
            "[[",
            "{",
            "}",
            ",",
            "\n",
            "#",
            "\\u",
            "-",
            "+",
            "inf",
            "nan",
            "1e999",
            "99999999999999999999",
            "0x",
            "true",
            "1979-05-27",
            "[::1]:0",
            "listen",
            ".",
        ];
        crate::testing::fuzz(
            "config TOML",
            256,
            crate::testing::inputs(valid, dict),
            |input| {
                if let Ok(config) = Config::from_toml(&input.text(), Overrides::default()) {
                    // Whatever is accepted is within the documented limits.
                    prop_assert!((1..=1 << 20).contains(&config.limits.max_value_bytes));
                    prop_assert!((1..=10_000).contains(&config.limits.max_fields));
                    prop_assert!(config.max_concurrent_streams >= 1);
                }
                Ok(())
            },
        );
    }
}
