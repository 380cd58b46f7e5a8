//! The composition root: opens the data store and the key store, loads the key provider, the
//! schema, the policy and the tokens, reconciles the two stores, and serves the gRPC services
//! (with health and reflection) until shut down.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use zeroize::Zeroizing;

use crate::{
    api::{
        AuditApi, ConsentApi, HoldsApi, KeysApi, PoliciesApi, RecordsApi, RetentionApi, TokensApi,
        auth::Authenticator,
        connections,
        health::CheckOnly,
        pb::{
            self, audit_server::AuditServer, consent_server::ConsentServer,
            holds_server::HoldsServer, keys_server::KeysServer, policies_server::PoliciesServer,
            records_server::RecordsServer, retention_server::RetentionServer,
            tokens_server::TokensServer,
        },
    },
    audit::{Audit, Event},
    config::Config,
    crypto::{KeyProvider, Keyring, Pkcs11Provider},
    domain::{Principal, Role, Schema, Subject},
    files,
    storage::{self, Batch, Store},
    vault::{
        ADMIN_ROLE, Keys, Peers, Vault,
        changes::{self, Followed, Watcher},
        governance::Governance,
        limits::{Limiter, SubjectLimits},
        now_ms,
        tokens::{TokenOptions, TokenRegistry},
    },
};

/// How long refused unauthenticated calls are counted before their events are written.
const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// The health service name that says whether reads are audited: `SERVING` when they are,
/// `NOT_SERVING` on a vault started with read auditing off (a bench-only switch).
pub const READ_AUDIT_HEALTH: &str = "strongroom.v1.ReadAudit";

/// Why the server could not start or stopped with an error. Messages are for operators.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(String);

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// The address it listens on (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// The admin token created on the first start of an empty vault; `None` afterwards.
    pub first_admin_token: Option<Zeroizing<String>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Running {
    /// Stops accepting calls, lets in-flight ones finish, and closes the store.
    ///
    /// # Errors
    /// `ServerError` if the server failed while running.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server stops (after `shutdown` or a fatal error).
    ///
    /// # Errors
    /// `ServerError` if the server failed.
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        (&mut self.task)
            .await
            .map_err(|e| ServerError(format!("server task failed: {e}")))?
    }

    /// A sender that stops the server when sent to (or dropped by) a signal handler.
    pub fn take_shutdown(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

fn read(dir: &std::path::Path, name: &str) -> Result<String, ServerError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|e| {
        ServerError(format!("cannot read {}: {e} (set --policies to the directory holding model.conf, policy.csv and schema.toml)", path.display()))
    })
}

/// Gives the client's own mistakes the client-error codes gRPC clients expect: tonic answers a
/// message over the size limit with OUT_OF_RANGE (made RESOURCE_EXHAUSTED here) and a message
/// that does not decode (e.g. invalid UTF-8 in a string) with INTERNAL (made INVALID_ARGUMENT).
fn client_errors_as_client_codes(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers();
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).replace("%20", " "))
        .unwrap_or_default();
    let code = match headers.get("grpc-status").map(http::HeaderValue::as_bytes) {
        Some(b"11") if message.contains("message length too large") => Some("8"),
        Some(b"13") if message.starts_with("failed to decode Protobuf message") => Some("3"),
        Some(_) | None => None,
    };
    if let Some(code) = code {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(code));
    }
    response
}

/// How long a TLS handshake may take before the connection is dropped, so a client that stalls
/// mid-handshake holds its connection slot only this long.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The listener's TLS settings from the files the config names. With a client CA, client
/// certificates are verified against it at the handshake but not demanded there: tonic cannot
/// demand them per service, and health stays open; the authenticator refuses every other call
/// that came without one.
fn server_tls(tls: &crate::config::Tls) -> Result<ServerTlsConfig, ServerError> {
    let cert =
        crate::tls::read_certificates(&tls.cert_file, "tls_cert_file").map_err(ServerError)?;
    let key = files::read_secret(
        &tls.key_file,
        "tls_key_file",
        crate::tls::MAX_KEY_FILE_BYTES,
    )
    .map_err(ServerError)?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&cert, &*key))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &tls.client_ca_file {
        let pem = crate::tls::read_certificates(ca, "client_ca_file").map_err(ServerError)?;
        config = config
            .client_ca_root(Certificate::from_pem(pem))
            .client_auth_optional(true);
    }
    Ok(config)
}

/// The key store's directory in the keys dir.
pub const KEY_STORE_DIR: &str = "keystore";

/// The directory in the data dir holding the audit log's segment files.
pub const AUDIT_DIR: &str = "audit";

/// The key file of strongroom versions before key epochs.
const LEGACY_KEY_FILE: &str = "master.key";

/// Refuses keys inside the data dir (symbolic links resolved), a keys dir (or data dir)
/// holding a master key of a version before key epochs, whose data this version cannot read,
/// and a keyring file in the keys dir of a vault configured with `[pkcs11]`.
fn check_key_placement(config: &Config) -> Result<(), ServerError> {
    let inside = |p: &std::path::Path| files::is_within(p, &config.data_dir).map_err(ServerError);
    for old in [
        config.data_dir.join(LEGACY_KEY_FILE),
        config.keys_dir.join(LEGACY_KEY_FILE),
    ] {
        if old.exists() && !config.keyring_file.exists() {
            return Err(ServerError(format!(
                "{} is a master key of a strongroom version before key epochs: this version \
                 keeps a keyring ({}) and a key store apart from the data, and cannot read data \
                 written under that master key. Start it on a new data dir and keys dir",
                old.display(),
                config.keyring_file.display()
            )));
        }
    }
    if let Some(hsm) = &config.pkcs11 {
        // Keys wrapped under a keyring's epochs cannot be opened by the token's epochs.
        if config.keyring_file.exists() {
            return Err(ServerError(format!(
                "[pkcs11] is set, but the keys dir holds a keyring file ({}): the data keys of \
                 this vault are wrapped under that keyring, and the HSM token '{}' cannot open \
                 them. Start the pkcs11 provider on a new data dir and keys dir, or remove \
                 [pkcs11] to keep using the keyring",
                config.keyring_file.display(),
                hsm.token_label
            )));
        }
    } else if let Some(dir) = files::parent_of(&config.keyring_file) {
        // Made first, so that a symbolic link on its way into the data dir is resolved.
        files::private_dir(&dir, "keys dir").map_err(ServerError)?;
    }
    files::private_dir(&config.keys_dir, "keys dir").map_err(ServerError)?;
    if inside(&config.keys_dir)? || inside(&config.keyring_file)? {
        return Err(ServerError(format!(
            "the keys dir {} or keyring {} is inside the data dir {} (through a symbolic link): \
             a copy of the data dir would carry its keys; choose a keys dir outside it",
            config.keys_dir.display(),
            config.keyring_file.display(),
            config.data_dir.display()
        )));
    }
    Ok(())
}

/// Where each store records which store it is (in its `meta`), at its first start.
const STORE_ROLE_KEY: &[u8] = b"store/role";

/// Marks the data store and the key store with their roles at the first start, and refuses
/// either when it carries the other's mark: two settings that name one database (one spelled
/// `db1`, the other `db1:5432`) would put the data keys next to the data they open.
fn check_store_roles(store: &dyn Store, key_store: &dyn Store) -> Result<(), ServerError> {
    for (s, role, other) in [(store, "data", "key"), (key_store, "key", "data")] {
        let fail = |e: &dyn std::fmt::Display| ServerError(format!("{role} store: {e}"));
        match s
            .get(storage::Keyspace::Meta, STORE_ROLE_KEY)
            .map_err(|e| fail(&e))?
        {
            Some(mark) if mark == role.as_bytes() => {}
            Some(_) => {
                return Err(ServerError(format!(
                    "the {role} store is the {other} store (it is marked as the {other} \
                     store): the data and the key store must be apart, so that a copy of the \
                     data holds no data key; point them at two databases"
                )));
            }
            None => {
                let mut batch = Batch::new();
                batch.put(storage::Keyspace::Meta, STORE_ROLE_KEY, role.as_bytes());
                s.write(batch).map_err(|e| fail(&e))?;
            }
        }
    }
    Ok(())
}

/// The key provider the config names, and how it was found (for the audit log).
fn open_provider(config: &Config) -> Result<(Arc<dyn KeyProvider>, String), ServerError> {
    if let Some(hsm) = &config.pkcs11 {
        // The PIN is read from its file inside `open` and never leaves it; errors name the
        // file, not its content.
        let provider = Pkcs11Provider::open(hsm).map_err(ServerError)?;
        return Ok((
            Arc::new(provider),
            format!(
                "pkcs11 token '{}' through module {}",
                hsm.token_label,
                hsm.module.display()
            ),
        ));
    }
    let existed = config.keyring_file.exists();
    let verb = if existed { "loaded from" } else { "created in" };
    let shown = config.keyring_file.display();
    match &config.master_key_env {
        Some(var) => {
            let ring = Keyring::open_env(&config.keyring_file, var).map_err(ServerError)?;
            Ok((
                Arc::new(ring),
                format!("env keyring {verb} {shown}, sealed under the key in {var}"),
            ))
        }
        None => {
            let ring = Keyring::open_file(&config.keyring_file).map_err(ServerError)?;
            Ok((Arc::new(ring), format!("file keyring {verb} {shown}")))
        }
    }
}

/// Opens everything and starts serving on `config.listen`.
///
/// # Errors
/// `ServerError` with an operator-facing message: unreadable policies, a bad keyring or key store,
/// a store that cannot open, an address that cannot be bound.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    if let Some(pg) = &config.postgres {
        let open = |options: &storage::PgOptions, what: &str| {
            storage::PgStore::open(options)
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(|e| ServerError(format!("{what}: {e}")))
        };
        let store = open(&pg.data, "data store")?;
        let key_store = open(&pg.keys, "key store")?;
        return start_with_stores(config, store, key_store).await;
    }
    files::private_dir(&config.data_dir, "data dir").map_err(ServerError)?;
    let store: Arc<dyn Store> = Arc::new(
        storage::open_rocks(&config.data_dir.join("db"), config.store)
            .map_err(|e| ServerError(e.to_string()))?,
    );
    start_with_store(config, store).await
}

/// As `start`, over a store the caller opened (any `Store` implementation).
///
/// # Errors
/// As `start`.
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<Running, ServerError> {
    check_key_placement(&config)?;
    let key_store: Arc<dyn Store> = Arc::new(
        storage::open_rocks(&config.keys_dir.join(KEY_STORE_DIR), config.store)
            .map_err(|e| ServerError(format!("key store: {e}")))?,
    );
    start_with_stores(config, store, key_store).await
}

/// As `start`, over a data store and a key store the caller opened.
///
/// # Errors
/// As `start`.
pub async fn start_with_stores(
    config: Config,
    store: Arc<dyn Store>,
    key_store: Arc<dyn Store>,
) -> Result<Running, ServerError> {
    let fail = |e: &dyn std::fmt::Display| ServerError(e.to_string());
    config.check_listener().map_err(ServerError)?;
    // Read first: a wrong certificate or key file fails the start before anything is opened.
    let tls = config.tls.as_ref().map(server_tls).transpose()?;
    files::private_dir(&config.data_dir, "data dir").map_err(ServerError)?;
    check_key_placement(&config)?;
    check_store_roles(store.as_ref(), key_store.as_ref())?;
    let (provider, key_source) = open_provider(&config)?;
    let schema = Arc::new(
        Schema::parse(&read(&config.policies_dir, "schema.toml")?)
            .map_err(|e| ServerError(format!("{}: {}", e.field, e.problem)))?,
    );
    let model = read(&config.policies_dir, "model.conf")?;
    let policy_text = read(&config.policies_dir, "policy.csv")?;

    let audit = if config.audit.in_store {
        Audit::open(Arc::clone(&store), Arc::clone(&provider), config.audit)
    } else {
        Audit::open_segments(
            &config.data_dir.join(AUDIT_DIR),
            Arc::clone(&store),
            Arc::clone(&provider),
            config.audit,
        )
    };
    let audit = Arc::new(audit.map_err(|e| fail(&e))?);
    let epochs: Vec<String> = provider.epochs().iter().map(ToString::to_string).collect();
    let key_event = Event {
        method: "Keys/Load".into(),
        result: "OK".into(),
        detail: format!("{key_source}; live epochs {}", epochs.join(", ")),
        ..Event::default()
    };
    audit
        .commit(Batch::new(), vec![key_event])
        .await
        .map_err(|e| fail(&e))?;

    // Several vault nodes share a PostgreSQL store: each follows the others' changes. Read
    // before the tokens and the policy are, so a change made in between is reloaded.
    let watcher = match store.shared() {
        true => Some(Watcher::new(Arc::clone(&store)).map_err(|e| fail(&e))?),
        false => None,
    };
    let token_options = TokenOptions {
        clock: config.clock.clone(),
        max_vendor_lifetime: config.max_vendor_token_lifetime,
    };
    let tokens = Arc::new(
        TokenRegistry::load(Arc::clone(&store), Arc::clone(&schema), token_options)
            .map_err(|e| fail(&e))?,
    );
    let mut first_admin_token = None;
    if tokens.is_empty() {
        let admin = Principal::new(
            Subject::parse("user:admin", "subject").map_err(|e| fail(&e))?,
            vec![Role::parse(ADMIN_ROLE, "role").map_err(|e| fail(&e))?],
        );
        let event = Event {
            method: "Tokens/Bootstrap".into(),
            result: "OK".into(),
            ..Event::default()
        };
        first_admin_token = Some(
            tokens
                .bootstrap(&admin, &audit, event)
                .await
                .map_err(|e| fail(&e))?,
        );
    }
    let governance = Arc::new(
        Governance::open(
            Arc::clone(&store),
            Arc::clone(&audit),
            Arc::clone(&schema),
            model,
            &policy_text,
            Arc::clone(&tokens),
        )
        .await
        .map_err(ServerError)?,
    );
    let policy = governance.engine();
    let followed = watcher.map(|watcher| {
        let followed = Followed {
            tokens: Arc::clone(&tokens),
            governance: Arc::clone(&governance),
            provider: Arc::clone(&provider),
        };
        (followed, watcher)
    });
    let mut vault = Vault::new(
        Arc::clone(&store),
        Keys {
            store: key_store,
            provider,
            rotation: config.rotation,
        },
        Arc::clone(&audit),
        Arc::clone(&schema),
        Arc::clone(&policy),
        config.limits,
    );
    let limiter = Arc::new(Limiter::new(
        config.rate_limits.clone(),
        config.clock.clone(),
    ));
    vault = vault
        .with_limiter(Arc::clone(&limiter))
        .with_clock(config.clock.clone());
    let peers = match store.shared() {
        true => Peers::Possible,
        false => Peers::None,
    };
    if let Err(e) = vault.reconcile(peers).await {
        // Its background tasks hold the stores: stop them, so the stores close with the error.
        vault.stop().await;
        return Err(fail(&e));
    }
    if config.danger_disable_read_audit {
        let warning = "DANGER: read auditing is OFF (--danger-disable-read-audit): reads are \
                       not recorded in the audit log; this vault is for benchmarks only and \
                       breaks its own promises";
        tracing::warn!("{warning}");
        eprintln!("{warning}");
        let event = Event {
            method: "Server/DangerDisableReadAudit".into(),
            result: "OK".into(),
            detail: "started with read auditing off: reads are not audited until a restart \
                     without --danger-disable-read-audit"
                .into(),
            ..Event::default()
        };
        audit
            .commit(Batch::new(), vec![event])
            .await
            .map_err(|e| fail(&e))?;
        vault = vault.danger_without_read_audit();
    }
    let vault = Arc::new(vault);
    vault.start_retention(config.sweep_interval);
    let background = Arc::clone(&vault);

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError(format!("cannot read the bound address: {e}")))?;

    let mut auth = Authenticator::new(Arc::clone(&tokens), Arc::clone(&audit));
    // Without a `[rate_limits]` entry the authenticator has no limit to check on each call.
    if config.rate_limits != SubjectLimits::default() {
        auth = auth.with_limits(limiter);
    }
    if let Some(tls) = config.tls.as_ref().filter(|t| t.client_ca_file.is_some()) {
        auth = auth.with_client_certificates(tls.identities.clone());
    }
    let max = config.max_message_bytes;
    let keys_svc = KeysServer::new(KeysApi::new(Arc::clone(&vault)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let holds_svc = HoldsServer::new(HoldsApi::new(Arc::clone(&vault)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let consent_svc = ConsentServer::new(ConsentApi::new(Arc::clone(&vault)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let records =
        RecordsServer::new(RecordsApi::new(Arc::clone(&vault)).with_stopping(stopping.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let tokens_svc = TokensServer::new(TokensApi::new(
        Arc::clone(&tokens),
        Arc::clone(&policy),
        Arc::clone(&audit),
        schema,
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let retention_svc = RetentionServer::new(RetentionApi::new(Arc::clone(&vault)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let policies = PoliciesServer::new(PoliciesApi::new(Arc::clone(&governance)))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let audit_svc = AuditServer::new(AuditApi::new(
        Arc::clone(&audit),
        Arc::clone(&policy),
        stopping,
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError(format!("cannot build reflection: {e}")))?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RecordsServer<RecordsApi>>()
        .await;
    health_reporter
        .set_serving::<TokensServer<TokensApi>>()
        .await;
    health_reporter
        .set_serving::<PoliciesServer<PoliciesApi>>()
        .await;
    health_reporter.set_serving::<AuditServer<AuditApi>>().await;
    health_reporter.set_serving::<KeysServer<KeysApi>>().await;
    health_reporter.set_serving::<HoldsServer<HoldsApi>>().await;
    health_reporter
        .set_serving::<ConsentServer<ConsentApi>>()
        .await;
    health_reporter
        .set_serving::<RetentionServer<RetentionApi>>()
        .await;
    // Whether reads are audited, for probes and dashboards: NOT_SERVING when auditing is off.
    health_reporter
        .set_service_status(
            READ_AUDIT_HEALTH,
            if config.danger_disable_read_audit {
                tonic_health::ServingStatus::NotServing
            } else {
                tonic_health::ServingStatus::Serving
            },
        )
        .await;

    // Refused unauthenticated calls are counted; each minute closes a window and writes one
    // event per source, method and reason, and shutdown writes the last one. A flush is never
    // cancelled halfway: the stop signal is only looked at between flushes.
    let (stop_refusals, mut refusals_stopped) = oneshot::channel::<()>();
    let refusals = {
        let audit = Arc::clone(&audit);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFUSAL_WINDOW);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = &mut refusals_stopped => break,
                }
                // A failure is logged by the audit log; the next window is counted afresh.
                let _ = audit.flush_refusals().await;
            }
            let _ = audit.flush_refusals().await;
        })
    };

    // Retention of the audit log itself: prune at start and every hour.
    let pruner = {
        let audit = Arc::clone(&audit);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                match audit.prune(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "audit log pruned past its retention"),
                    Err(e) => tracing::error!(error = %e, "audit log pruning failed"),
                }
            }
        })
    };

    let (tx, rx) = oneshot::channel::<()>();
    let limits = config.transport;
    let mut builder = Server::builder();
    if let Some((tls, files)) = tls.zip(config.tls.as_ref()) {
        // The certificates parsed; what is left to fail is the key, or the pair.
        builder = builder.tls_config(tls).map_err(|e| {
            ServerError(format!(
                "tls_key_file: {} is not a PEM private key (PKCS#8, PKCS#1 or SEC1) matching \
                 the certificate in tls_cert_file {}: {}",
                files.key_file.display(),
                files.cert_file.display(),
                crate::tls::error_chain(&e)
            ))
        })?;
    }
    // Every service, health included, is under the same connection, stream and time limits.
    let router = builder
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .concurrency_limit_per_connection(limits.max_requests_per_connection)
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .layer(tower::util::MapResponseLayer::new(
            client_errors_as_client_codes,
        ))
        .add_service(CheckOnly::new(health))
        .add_service(auth.guard(reflection))
        .add_service(auth.guard(records))
        .add_service(auth.guard(policies))
        .add_service(auth.guard(audit_svc))
        .add_service(auth.guard(tokens_svc))
        .add_service(auth.guard(keys_svc))
        .add_service(auth.guard(holds_svc))
        .add_service(auth.guard(consent_svc))
        .add_service(auth.guard(retention_svc));
    // Started last: nothing after it can fail the start and leave it holding the store.
    let follower =
        followed.map(|(followed, watcher)| tokio::spawn(changes::follow(followed, watcher)));
    let task = tokio::spawn(async move {
        let result = router
            .serve_with_incoming_shutdown(
                // The builder's TCP settings do not apply to an incoming stream: set them here.
                connections::limit(
                    TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(limits.tcp_keepalive)),
                    limits.max_connections,
                ),
                async {
                    let _ = rx.await;
                    // End live streams first: graceful shutdown waits for every open call.
                    let _ = stopping_tx.send(true);
                },
            )
            .await
            .map_err(|e| ServerError(format!("server failed: {e}")));
        pruner.abort();
        let _ = pruner.await;
        if let Some(follower) = follower {
            follower.abort();
            let _ = follower.await;
        }
        background.stop().await;
        // The last window of refused calls, before the final checkpoint.
        let _ = stop_refusals.send(());
        let _ = refusals.await;
        // A durable checkpoint of the final head, so a truncated tail is seen after a restart.
        if let Err(e) = audit.checkpoint().await {
            tracing::error!(error = %e, "the shutdown checkpoint of the audit log failed");
        }
        drop(health_reporter);
        result
    });
    let transport = match &config.tls {
        None => "plaintext (loopback only)",
        Some(t) if t.client_ca_file.is_some() => "TLS, client certificates required (mTLS)",
        Some(_) => "TLS",
    };
    tracing::info!(%addr, transport, data_dir = %config.data_dir.display(), keys_dir = %config.keys_dir.display(), "strongroom serving");
    Ok(Running {
        addr,
        first_admin_token,
        shutdown: Some(tx),
        task,
    })
}
