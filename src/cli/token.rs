//! `strongroom token ...`: issue bearer tokens.

use clap::Subcommand;
use serde_json::json;

use super::{Remote, connect, status_text};
use crate::api::pb;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Every issued token: subject, roles, when, and a short id (never the token).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke every token of a subject.
    Revoke {
        /// The subject, e.g. svc:crm.
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        remote: Remote,
    },
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

pub(super) async fn token(command: TokenCommand) -> Result<(), String> {
    let (subject, roles, remote) = match command {
        TokenCommand::Create {
            subject,
            roles,
            remote,
        } => (subject, roles, remote),
        TokenCommand::List { remote } => {
            let mut client = connect(&remote).await?;
            let list = client
                .tokens
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            for t in &list.tokens {
                if remote.json {
                    println!(
                        "{}",
                        json!({"id": t.id, "subject": t.subject, "roles": t.roles, "created_at_unix_ms": t.created_at_unix_ms})
                    );
                } else {
                    println!(
                        "{}  {:<24} {:<28} {}",
                        t.id,
                        t.subject,
                        t.roles.join(","),
                        super::when(t.created_at_unix_ms)
                    );
                }
            }
            return Ok(());
        }
        TokenCommand::Revoke { subject, remote } => {
            let mut client = connect(&remote).await?;
            let reply = client
                .tokens
                .revoke_tokens(pb::RevokeTokensRequest {
                    subject: subject.clone(),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", json!({"subject": subject, "revoked": reply.revoked}));
            } else {
                println!("revoked {} token(s) of {subject}", reply.revoked);
            }
            return Ok(());
        }
    };
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
