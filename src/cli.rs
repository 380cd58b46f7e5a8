//! The command line: `serve`, the client commands (`token`, `record`, `export`, `policy`,
//! `audit`, `keys`, `consent`, `hold`) that talk to a running server, and the offline checks (`audit verify
//! --file`, `receipt verify`) that need only the public key. Readable output by default, `--json` for scripts.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

mod audit;
mod breach;
mod consent;
mod export;
mod hold;
mod import;
mod keys;
mod policy;
mod receipt;
mod record;
mod retention;
mod subject;
mod tls;
mod token;

use crate::{
    client::{self, Client},
    config::{Config, ConfigFile, Overrides},
    server,
};
use audit::{AuditCommand, audit};
use consent::{ConsentCommand, consent};
use export::{ExportArgs, export};
use hold::{HoldCommand, hold};
use import::{ImportArgs, import};
use keys::{KeysCommand, keys};
use policy::{PolicyCommand, policy};
use receipt::{ReceiptCommand, receipt};
use record::{RecordCommand, record};
use retention::{RetentionCommand, retention};
use subject::{SubjectCommand, subject};
use tls::{TlsCommand, tls};
use token::{TokenCommand, token};

/// strongroom: an encrypted customer-record vault.
#[derive(Debug, Parser)]
#[command(name = "strongroom", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` (coloured only on a terminal) or `json` (one object per
    /// line, for log shippers). The level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How the log is written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines; ANSI colours only when stderr is a terminal and NO_COLOR is unset.
    Text,
}

impl Cli {
    /// Installs the process's log subscriber: to stderr, in the chosen format, filtered by
    /// RUST_LOG (default `info`). Colour codes only reach a terminal, never a file or a pipe.
    pub fn init_logging(&self) {
        use std::io::IsTerminal;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Json => builder.json().with_ansi(false).init(),
            LogFormat::Text => {
                let colour = std::io::stderr().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
                builder.with_ansi(colour).init();
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the vault (creates the data dir, the keys dir with the keyring and key store, and
    /// the first admin token if missing).
    Serve(ServeArgs),
    /// Issue bearer tokens (needs an admin token).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Create, read, update and crypto-shred records.
    Record {
        #[command(subcommand)]
        command: RecordCommand,
    },
    /// Export every record of a collection for a purpose to a JSON Lines file (e.g.
    /// pseudonyms for analytics), with a progress bar.
    Export(ExportArgs),
    /// Load records from a CSV (header row of field names) or JSON Lines file: every row
    /// checked first (nothing written if one is bad, unless --skip-invalid), then batches with
    /// a progress bar; resumable; writes the map from input line to record id.
    Import(ImportArgs),
    /// Show, apply, diff, dry-run, explain and roll back role policies (security admins).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Measure the vault: throughput, latency and server CPU per workload, against ceilings.
    Bench(BenchArgs),
    /// Serve the echo ceiling for `strongroom bench` (started by the bench itself).
    #[command(hide = true)]
    BenchEcho {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Query, follow, verify and export the audit log (auditors and admins); verify an
    /// export offline with the public key alone.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key epochs: status, rotation, and the public key that verifies the vault's signatures.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// A data subject's rights: the signed subject-access export, erasure of every record,
    /// and offline verification of both.
    Subject {
        #[command(subcommand)]
        command: SubjectCommand,
    },
    /// Legal holds: place, release and list them (privacy officers, admins). A held record
    /// refuses its shred, its erasure and its retention expiry.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
    /// Retention: what the schema's rules will expire and when (a dry run), and a sweep now
    /// (admins, privacy officers).
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Verify a shred receipt offline, with the public key alone.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// A record's consent ledger: grant or revoke consent per purpose and channel, set or
    /// clear opt-outs (do_not_call, do_not_sell_or_share), show the ledger and its history.
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
    },
    /// Certificates for TLS and mTLS: `tls init DIR` writes a private CA, a server
    /// certificate and client certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A TOML config file (unknown keys are an error).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./strongroom-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keys directory, for the keyring and the key store of wrapped data keys; never inside the
    /// data dir [default: next to the data dir, ./strongroom-keys for ./strongroom-data].
    #[arg(long)]
    keys_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7700].
    #[arg(long)]
    listen: Option<String>,
    /// Directory with model.conf, policy.csv and schema.toml [default: ./policies].
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Keep the data on PostgreSQL instead of the embedded RocksDB, so that several vault
    /// nodes can serve it: `postgres://user@host1,host2/strongroom?target_session_attrs=read-write`.
    /// The key store goes to the database of the same name + `_keys` unless `[postgres]
    /// keys_url` says otherwise. Put a password in the URL's config file, not here.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Bench only: do not audit reads, to measure what auditing costs. Set by `strongroom
    /// bench` on the throwaway vault it starts; never for a vault that holds real data.
    #[arg(long, hide = true)]
    danger_disable_read_audit: bool,
}

/// How to reach the server, shared by the client commands.
#[derive(Debug, Args)]
struct Remote {
    /// Server address: `http://host:port` (loopback, plaintext) or `https://host:port` (TLS,
    /// needs --ca-cert).
    #[arg(
        long,
        env = "STRONGROOM_ADDR",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    addr: String,
    /// The CA certificate (PEM) that signed the server's certificate, for https:// addresses
    /// (`ca.pem` from `strongroom tls init`).
    #[arg(long, env = "STRONGROOM_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) for a vault that requires them (mTLS); needs --client-key.
    #[arg(long, env = "STRONGROOM_CLIENT_CERT", global = true)]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, mode 0600).
    #[arg(long, env = "STRONGROOM_CLIENT_KEY", global = true)]
    client_key: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// A running vault (admin token in STRONGROOM_TOKEN); by default the bench starts its own.
    #[arg(long)]
    addr: Option<String>,
    /// TCP connections per role.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight, in total.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds per workload.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Requests per workload (instead of a duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Records preloaded before the read workloads.
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Workloads, comma-separated: put, batch-put, get-full, get-masked, batch-get (16 ids a
    /// call), find, get-denied, update, mix, shred,
    /// shred-wait, audit-cost, policy (default: all of these), and rotation (key rotation:
    /// rewrap rate, reads during a rotation; best with --records 100000), retention (a sweep
    /// with a tenth of the records expired) and audit-query (queries by record and subject in
    /// an audit log of --audit-events events, no server); settle waits until the vault is idle
    /// (compactions done) and names the rows after it "(settled)".
    #[arg(long, value_delimiter = ',')]
    workload: Vec<String>,
    /// Draw record ids Zipf-skewed with this exponent (e.g. 0.99) instead of uniformly.
    #[arg(long)]
    zipf: Option<f64>,
    /// Directory with the policies for the started vault.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// Do not pin the server to CPU 0 and the load generator to the other CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The started vault's key rewrap rate limit (keys/s), for the rotation workload.
    #[arg(long)]
    rewrap_per_second: Option<u32>,
    /// The started vaults' RocksDB block cache (MiB; the config key `block_cache_mib`).
    #[arg(long)]
    block_cache_mib: Option<usize>,
    /// Also measure get-masked and put over TLS and over plaintext, on two fresh vaults the
    /// bench starts (the TLS one with a certificate from `tls init`), back to back.
    #[arg(long)]
    tls: bool,
    /// Events the audit-query workload appends to its log before it queries.
    #[arg(long, default_value_t = 10_000_000)]
    audit_events: u64,
    /// Also measure get-masked and put with one and with --nodes vault nodes on this
    /// PostgreSQL database (postgres://...; the key store in its `_keys` database), against a
    /// fresh RocksDB vault, back to back. The nodes' stores go in a fresh schema, dropped after.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The vault nodes of the larger PostgreSQL side of --store.
    #[arg(long, default_value_t = 2, requires = "store")]
    nodes: usize,
}

async fn bench(args: BenchArgs) -> Result<(), String> {
    if args.duration.is_nan() || args.duration <= 0.0 {
        return Err("--duration must be positive".into());
    }
    let workloads = if args.workload.is_empty() {
        crate::bench::WORKLOADS
            .iter()
            // audit-cost and get-consent need a vault the bench starts itself: not with --addr.
            .filter(|w| args.addr.is_none() || !matches!(**w, "audit-cost" | "get-consent"))
            // rotation and retention want many records, audit-query many events, and settle
            // belongs between the workloads it separates: asked for by name.
            .filter(|w| !matches!(**w, "rotation" | "retention" | "audit-query" | "settle"))
            .map(|w| (*w).to_owned())
            .collect()
    } else {
        args.workload
    };
    crate::bench::run(crate::bench::BenchOptions {
        addr: args.addr,
        connections: args.connections.max(1),
        in_flight: args.in_flight.max(1),
        duration: std::time::Duration::from_secs_f64(args.duration),
        requests: args.requests,
        records: args.records.max(1),
        workloads,
        zipf: args.zipf,
        policies: args.policies,
        pin: !args.no_pin,
        json: args.json,
        rewrap_per_second: args.rewrap_per_second,
        block_cache_mib: args.block_cache_mib,
        tls: args.tls,
        audit_events: args.audit_events.max(1),
        store: args.store,
        nodes: args.nodes,
    })
    .await
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Token { command } => token(command).await,
        Command::Record { command } => record(command).await,
        Command::Export(args) => export(args).await,
        Command::Import(args) => import(args).await,
        Command::Policy { command } => policy(command).await,
        Command::Audit { command } => audit(command).await,
        Command::Keys { command } => keys(command).await,
        Command::Subject { command } => subject(command).await,
        Command::Hold { command } => hold(command).await,
        Command::Consent { command } => consent(command).await,
        Command::Retention { command } => retention(command).await,
        Command::Receipt { command } => receipt(command),
        Command::Tls { command } => tls(command),
        Command::Bench(args) => bench(args).await,
        Command::BenchEcho { listen } => crate::bench::serve_echo(listen).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let file = match &args.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    let mut config = Config::resolve(
        file,
        Overrides {
            listen: args.listen,
            data_dir: args.data_dir,
            keys_dir: args.keys_dir,
            policies_dir: args.policies,
            store_url: args.store,
        },
    )?;
    // Every file the vault creates (RocksDB's, the key file) is private to this user.
    crate::files::restrict_umask();
    config.danger_disable_read_audit = args.danger_disable_read_audit;
    let (data_dir, keys_dir) = (config.data_dir.clone(), config.keys_dir.clone());
    let mut running = server::start(config).await.map_err(|e| e.to_string())?;
    println!(
        "strongroom listening on {} (data dir {}, keys dir {})",
        running.addr,
        data_dir.display(),
        keys_dir.display()
    );
    if let Some(token) = running.first_admin_token.take() {
        println!(
            "First start: an admin token was created. It is shown only this once; keep it safe:"
        );
        println!("  export STRONGROOM_TOKEN={}", token.as_str());
    }
    let stop = running.take_shutdown();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    });
    running.wait().await.map_err(|e| e.to_string())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn connect(remote: &Remote) -> Result<Client, String> {
    let token = std::env::var("STRONGROOM_TOKEN")
        .map_err(|_| "set STRONGROOM_TOKEN to your bearer token".to_owned())?;
    let tls = client_tls(remote)?;
    client::connect_with(&remote.addr, token.trim(), tls.as_ref()).await
}

/// The TLS settings the flags give: none without --ca-cert; a client certificate and key only
/// together, and only with a CA.
fn client_tls(remote: &Remote) -> Result<Option<client::ClientTls>, String> {
    let client = match (&remote.client_cert, &remote.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(
                "--client-cert and --client-key: give both (a client certificate and \
                        its private key) or neither"
                    .into(),
            );
        }
    };
    match (&remote.ca_cert, client) {
        (Some(ca), client) => client::ClientTls::from_files(ca, client).map(Some),
        (None, Some(_)) => Err(
            "--client-cert: client certificates are sent over TLS; give \
                                --ca-cert (or STRONGROOM_CA_CERT) and an https:// address"
                .into(),
        ),
        (None, None) => Ok(None),
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// A UTC time for people: `2026-11-22 21:19:14Z`.
fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| format!("{ms} ms since the epoch"),
        |t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// Parses a time given on the command line: milliseconds since the epoch, `YYYY-MM-DD`, or
/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!("{s:?}: expected YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, or milliseconds since the epoch")
    };
    let at = if s.contains('T') {
        s.parse::<jiff::Timestamp>().map_err(|_| bad())?
    } else {
        s.parse::<jiff::civil::Date>()
            .map_err(|_| bad())?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|_| bad())?
            .timestamp()
    };
    Ok(at.as_millisecond())
}

/// Reads a public key file (PEM, as `strongroom keys public` writes it).
fn read_public_key(path: &std::path::Path) -> Result<crate::crypto::PublicKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the public key {}: {e}", path.display()))?;
    crate::crypto::PublicKey::from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(when(0), "1970-01-01 00:00:00Z");
        assert_eq!(when(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2000-02-29"), Ok(951_782_400_000));
        assert_eq!(parse_time("12345"), Ok(12345));
        assert!(parse_time("2000-13-01").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(
            parse_time("2023-11-14T22:13:20").is_err(),
            "no zone: not UTC"
        );
    }
}
