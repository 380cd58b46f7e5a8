//! `strongroom keys ...`: the key epochs and their rotation, and the public key.

use std::{path::PathBuf, time::Duration};

use clap::Subcommand;
use serde_json::json;

use super::{Remote, connect, status_text, when};
use crate::api::pb;

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// The live key epochs (created, data keys wrapped), the rotation in progress and the
    /// next automatic one (admins, security admins, auditors).
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a rotation: a new epoch, every data key rewrapped under it in the background,
    /// then the older epochs destroyed (admins).
    Rotate {
        /// Follow the rotation with a progress bar until it has ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// The public key (PEM) that verifies audit checkpoints and shred receipts offline.
    Public {
        /// Write it to this file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
}

fn status_json(s: &pb::KeyStatus) -> serde_json::Value {
    let epochs: Vec<_> = s
        .epochs
        .iter()
        .map(|e| json!({"id": e.id, "created_at_unix_ms": e.created_at_unix_ms, "keys": e.keys}))
        .collect();
    json!({
        "provider": s.provider, "epochs": epochs, "rotating": s.rotating,
        "rewrapped": s.rewrapped, "keys_under_older_epochs": s.keys_under_older_epochs,
        "shred_horizon_ms": s.shred_horizon_ms, "next_rotation_unix_ms": s.next_rotation_unix_ms,
    })
}

fn print_status(s: &pb::KeyStatus) {
    println!("provider: {}", s.provider);
    println!("epoch  created               data keys");
    let current = s.epochs.last().map(|e| e.id);
    for e in &s.epochs {
        let mark = if Some(e.id) == current {
            "  (current)"
        } else {
            ""
        };
        println!(
            "{:>5}  {}  {:>9}{mark}",
            e.id,
            when(e.created_at_unix_ms),
            e.keys
        );
    }
    if s.rotating {
        println!(
            "rotation in progress: {} data keys left under older epochs ({} rewrapped so far)",
            s.keys_under_older_epochs, s.rewrapped
        );
    } else {
        println!("no rotation in progress");
    }
    println!(
        "next automatic rotation: {} (shred horizon {})",
        when(s.next_rotation_unix_ms),
        horizon(s.shred_horizon_ms)
    );
}

fn horizon(ms: i64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms => format!("{} s", ms as f64 / 1000.0),
    }
}

pub(super) async fn keys(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Status { remote } => {
            let mut c = connect(&remote).await?;
            let s = c
                .keys
                .get_key_status(pb::GetKeyStatusRequest {})
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", status_json(&s));
            } else {
                print_status(&s);
            }
        }
        KeysCommand::Rotate { wait, remote } => {
            let mut c = connect(&remote).await?;
            let mut s = c
                .keys
                .rotate_keys(pb::RotateKeysRequest {})
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if !remote.json {
                let current = s.epochs.last().map_or(0, |e| e.id);
                println!(
                    "rotation to epoch {current} started: {} data keys to rewrap",
                    s.keys_under_older_epochs
                );
            }
            if wait {
                s = follow(&mut c, s, remote.json).await?;
            }
            if remote.json {
                println!("{}", status_json(&s));
            } else if wait {
                let current = s.epochs.last().map_or(0, |e| e.id);
                println!(
                    "rotation completed: every data key is under epoch {current}; the older epochs are destroyed"
                );
            }
        }
        KeysCommand::Public { out, remote } => {
            let mut c = connect(&remote).await?;
            let key = c
                .keys
                .get_public_key(pb::GetPublicKeyRequest {})
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            match out {
                Some(path) => {
                    std::fs::write(&path, &key.pem)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    if remote.json {
                        println!(
                            "{}",
                            json!({"out": path.display().to_string(), "fingerprint": key.fingerprint})
                        );
                    } else {
                        println!(
                            "public key {} written to {}",
                            key.fingerprint,
                            path.display()
                        );
                    }
                }
                None if remote.json => {
                    println!(
                        "{}",
                        json!({"pem": key.pem, "fingerprint": key.fingerprint})
                    );
                }
                None => print!("{}", key.pem),
            }
        }
    }
    Ok(())
}

/// Polls the status until the rotation has ended, with a progress bar of the data keys
/// rewrapped (on stderr, drawn only on a terminal). Returns the final status.
async fn follow(
    c: &mut crate::client::Client,
    mut s: pb::KeyStatus,
    quiet: bool,
) -> Result<pb::KeyStatus, String> {
    let total = s.keys_under_older_epochs;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} rewrapping [{bar:40}] {pos}/{len} data keys ({per_sec}, {eta} left)",
        )
        .map_err(|e| format!("progress bar: {e}"))?
        .progress_chars("=> "),
    );
    while s.rotating {
        // Keys stored under an older epoch during the pass can grow the total.
        let left = s.keys_under_older_epochs;
        if left > bar.length().unwrap_or(0) {
            bar.set_length(left);
        }
        bar.set_position(bar.length().unwrap_or(0).saturating_sub(left));
        tokio::time::sleep(Duration::from_millis(250)).await;
        s = c
            .keys
            .get_key_status(pb::GetKeyStatusRequest {})
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
    }
    bar.set_position(bar.length().unwrap_or(0));
    bar.finish_and_clear();
    Ok(s)
}
