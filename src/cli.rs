//! The command line: `serve`, and the client commands `token` and `record` that talk to a
//! running server. Readable output by default, `--json` for scripts.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::{
    api::pb,
    client::{self, Client},
    config::{Config, ConfigFile, Overrides},
    server,
};

/// strongroom: an encrypted customer-record vault.
#[derive(Debug, Parser)]
#[command(name = "strongroom", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the vault (creates the data dir, master key and first admin token if missing).
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
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A TOML config file (unknown keys are an error).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./strongroom-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7700].
    #[arg(long)]
    listen: Option<String>,
    /// Directory with model.conf, policy.csv and schema.toml [default: ./policies].
    #[arg(long)]
    policies: Option<PathBuf>,
}

/// How to reach the server, shared by the client commands.
#[derive(Debug, Args)]
struct Remote {
    /// Server address.
    #[arg(
        long,
        env = "STRONGROOM_ADDR",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    addr: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Issue a token for a subject with roles; it is printed once.
    Create {
        /// Namespaced subject, e.g. svc:crm or user:alice.
        #[arg(long)]
        subject: String,
        /// Role, e.g. role:writer (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
enum RecordCommand {
    /// Create a record: --field name=value, repeated.
    Create {
        /// Collection.
        #[arg(long, default_value = "customers")]
        collection: String,
        /// A field, as name=value (repeat).
        #[arg(long = "field", value_name = "NAME=VALUE", required = true)]
        fields: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Read a record for a declared purpose.
    Get {
        /// Record id.
        id: String,
        /// Why you read it, e.g. support, billing, marketing.
        #[arg(long)]
        purpose: String,
        /// Only these fields (repeat); all by default.
        #[arg(long = "field")]
        fields: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set and clear fields.
    Update {
        /// Record id.
        id: String,
        /// A field to set, as name=value (repeat).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// A field to clear (repeat).
        #[arg(long = "clear")]
        clear: Vec<String>,
        /// Apply only if the record is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Crypto-shred a record: its data key is destroyed.
    Delete {
        /// Record id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Token { command } => token(command).await,
        Command::Record { command } => record(command).await,
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
    let config = Config::resolve(
        file,
        Overrides {
            listen: args.listen,
            data_dir: args.data_dir,
            policies_dir: args.policies,
        },
    )?;
    let data_dir = config.data_dir.clone();
    let mut running = server::start(config).await.map_err(|e| e.to_string())?;
    println!(
        "strongroom listening on {} (data dir {})",
        running.addr,
        data_dir.display()
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
    client::connect(&remote.addr, token.trim()).await
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn pairs(items: &[String], flag: &str) -> Result<Vec<pb::Field>, String> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(name, value)| pb::Field {
                    name: name.trim().to_owned(),
                    value: value.to_owned(),
                })
                .ok_or_else(|| format!("{flag} {item:?}: expected NAME=VALUE"))
        })
        .collect()
}

async fn token(command: TokenCommand) -> Result<(), String> {
    let TokenCommand::Create {
        subject,
        roles,
        remote,
    } = command;
    let mut client = connect(&remote).await?;
    let reply = client
        .tokens
        .create_token(pb::CreateTokenRequest { subject, roles })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    if remote.json {
        println!(
            "{}",
            json!({"token": reply.token, "subject": reply.subject, "roles": reply.roles})
        );
    } else {
        println!(
            "token for {} ({}), shown only this once:",
            reply.subject,
            reply.roles.join(", ")
        );
        println!("{}", reply.token);
    }
    Ok(())
}

fn disclosure_name(d: i32) -> &'static str {
    match pb::Disclosure::try_from(d) {
        Ok(pb::Disclosure::Plain) => "plain",
        Ok(pb::Disclosure::Masked) => "masked",
        Ok(pb::Disclosure::Withheld) => "withheld",
        Ok(pb::Disclosure::Unspecified) | Err(_) => "unknown",
    }
}

async fn record(command: RecordCommand) -> Result<(), String> {
    match command {
        RecordCommand::Create {
            collection,
            fields,
            remote,
        } => {
            let fields = pairs(&fields, "--field")?;
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .create_record(pb::CreateRecordRequest { collection, fields })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", json!({"id": reply.id, "version": reply.version}));
            } else {
                println!("created record {} (version {})", reply.id, reply.version);
            }
        }
        RecordCommand::Get {
            id,
            purpose,
            fields,
            remote,
        } => {
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .get_record(pb::GetRecordRequest {
                    id,
                    fields,
                    purpose,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                let fields: Vec<_> = reply
                    .fields
                    .iter()
                    .map(|f| json!({"name": f.name, "disclosure": disclosure_name(f.disclosure), "value": f.value, "reason": f.reason}))
                    .collect();
                println!(
                    "{}",
                    json!({"id": reply.id, "collection": reply.collection, "version": reply.version, "policy_version": reply.policy_version, "fields": fields})
                );
            } else {
                println!(
                    "record {} ({}, version {}, policy version {})",
                    reply.id, reply.collection, reply.version, reply.policy_version
                );
                let width = reply.fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
                for f in &reply.fields {
                    match pb::Disclosure::try_from(f.disclosure) {
                        Ok(pb::Disclosure::Plain) => println!("  {:width$}  {}", f.name, f.value),
                        Ok(pb::Disclosure::Masked) => {
                            println!("  {:width$}  {}  (masked)", f.name, f.value)
                        }
                        Ok(pb::Disclosure::Withheld | pb::Disclosure::Unspecified) | Err(_) => {
                            println!("  {:width$}  -  ({})", f.name, f.reason);
                        }
                    }
                }
            }
        }
        RecordCommand::Update {
            id,
            set,
            clear,
            expected_version,
            remote,
        } => {
            let set = pairs(&set, "--set")?;
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .update_record(pb::UpdateRecordRequest {
                    id,
                    set,
                    clear,
                    expected_version,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", json!({"id": reply.id, "version": reply.version}));
            } else {
                println!(
                    "updated record {} (now version {})",
                    reply.id, reply.version
                );
            }
        }
        RecordCommand::Delete { id, remote } => {
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .delete_record(pb::DeleteRecordRequest { id })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            let r = reply.receipt.unwrap_or_default();
            if remote.json {
                println!(
                    "{}",
                    json!({"id": r.id, "collection": r.collection, "shredded_at_unix_ms": r.shredded_at_unix_ms, "data_key_destroyed": r.data_key_destroyed, "fields_destroyed": r.fields_destroyed, "purged_at_unix_ms": r.purged_at_unix_ms})
                );
            } else {
                println!(
                    "shredded record {} ({}): data key destroyed, {} field ciphertexts deleted, purged from live files",
                    r.id, r.collection, r.fields_destroyed
                );
            }
        }
    }
    Ok(())
}
