//! The command line: `serve`, and the client commands `token` and `record` that talk to a
//! running server. Readable output by default, `--json` for scripts.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

mod policy;
mod record;
mod token;

use crate::{
    client::{self, Client},
    config::{Config, ConfigFile, Overrides},
    server,
};
use policy::{PolicyCommand, policy};
use record::{RecordCommand, record};
use token::{TokenCommand, token};

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
    /// Show, apply, diff, dry-run, explain and roll back role policies (security admins).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
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

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Token { command } => token(command).await,
        Command::Record { command } => record(command).await,
        Command::Policy { command } => policy(command).await,
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
