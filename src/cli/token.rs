//! `strongroom token ...`: issue bearer tokens.

use clap::Subcommand;
use serde_json::json;

use super::{Remote, connect, status_text};
use crate::api::pb;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
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
