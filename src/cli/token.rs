//! `strongroom token ...`: issue, list, rotate and revoke bearer tokens.

use clap::Subcommand;
use serde_json::json;

use super::{Remote, connect, status_text};
use crate::api::pb;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Every issued token: subject, roles, when, expiry, purposes, and a short id (never the
    /// token).
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
        /// Namespaced subject, e.g. svc:crm, user:alice or vendor:acme.
        #[arg(long)]
        subject: String,
        /// Role, e.g. role:writer (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// How long the token works, e.g. 72h, 30m, 7d (default: it never expires). Required
        /// for vendor: subjects, at most the server's max_vendor_token_hours.
        #[arg(long)]
        expires_in: Option<String>,
        /// The only purpose the token may declare, as the schema declares it (repeat for
        /// several; default: any purpose). At least one for vendor: subjects.
        #[arg(long = "purpose")]
        purposes: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replace a token's secret: a new token with the same subject, roles, purposes and
    /// expiry is printed once; the old one keeps working for the grace period.
    Rotate {
        /// The token's id (8 hex digits, as `token list` shows).
        #[arg(long)]
        id: String,
        /// How long the old token keeps working, e.g. 30m (default 1h, at most 7d).
        #[arg(long)]
        grace: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// A token's expiry for people: `never expires`, `expires 2026-11-22 21:19:14Z`, or
/// `expired 2026-11-22 21:19:14Z`.
fn expiry_text(expires_at_unix_ms: i64, expired: bool) -> String {
    match (expires_at_unix_ms, expired) {
        (0, _) => "never expires".to_owned(),
        (at, true) => format!("expired {}", super::when(at)),
        (at, false) => format!("expires {}", super::when(at)),
    }
}

/// A token's purposes for people.
fn purposes_text(purposes: &[String]) -> String {
    if purposes.is_empty() {
        "any purpose".to_owned()
    } else {
        format!("purposes {}", purposes.join(","))
    }
}

pub(super) async fn token(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Create {
            subject,
            roles,
            expires_in,
            purposes,
            remote,
        } => {
            let request = pb::CreateTokenRequest {
                subject,
                roles,
                expires_in: expires_in.unwrap_or_default(),
                purposes,
            };
            create(request, &remote).await
        }
        TokenCommand::List { remote } => list(&remote).await,
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
            Ok(())
        }
        TokenCommand::Rotate { id, grace, remote } => {
            let mut client = connect(&remote).await?;
            let reply = client
                .tokens
                .rotate_token(pb::RotateTokenRequest {
                    id,
                    grace: grace.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!(
                    "{}",
                    json!({"token": reply.token, "id": reply.id, "subject": reply.subject,
                        "roles": reply.roles, "purposes": reply.purposes,
                        "expires_at_unix_ms": reply.expires_at_unix_ms, "old_id": reply.old_id,
                        "old_expires_at_unix_ms": reply.old_expires_at_unix_ms})
                );
            } else {
                println!(
                    "token {} for {} rotated to {} ({}, {}); the old one works until {}",
                    reply.old_id,
                    reply.subject,
                    reply.id,
                    expiry_text(reply.expires_at_unix_ms, false),
                    purposes_text(&reply.purposes),
                    super::when(reply.old_expires_at_unix_ms)
                );
                println!("the new token, shown only this once:");
                println!("{}", reply.token);
            }
            Ok(())
        }
    }
}

async fn list(remote: &Remote) -> Result<(), String> {
    let mut client = connect(remote).await?;
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
                json!({"id": t.id, "subject": t.subject, "roles": t.roles,
                    "created_at_unix_ms": t.created_at_unix_ms,
                    "expires_at_unix_ms": (t.expires_at_unix_ms != 0).then_some(t.expires_at_unix_ms),
                    "expired": t.expired, "purposes": t.purposes})
            );
        } else {
            println!(
                "{}  {:<24} {:<28} {}  {:<32} {}",
                t.id,
                t.subject,
                t.roles.join(","),
                super::when(t.created_at_unix_ms),
                expiry_text(t.expires_at_unix_ms, t.expired),
                purposes_text(&t.purposes)
            );
        }
    }
    Ok(())
}

async fn create(request: pb::CreateTokenRequest, remote: &Remote) -> Result<(), String> {
    let mut client = connect(remote).await?;
    let reply = client
        .tokens
        .create_token(request)
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    if remote.json {
        println!(
            "{}",
            json!({"token": reply.token, "id": reply.id, "subject": reply.subject,
                "roles": reply.roles, "purposes": reply.purposes,
                "expires_at_unix_ms": (reply.expires_at_unix_ms != 0).then_some(reply.expires_at_unix_ms)})
        );
    } else {
        println!(
            "token {} for {} ({}; {}, {}), shown only this once:",
            reply.id,
            reply.subject,
            reply.roles.join(", "),
            expiry_text(reply.expires_at_unix_ms, false),
            purposes_text(&reply.purposes)
        );
        println!("{}", reply.token);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_purposes_read_as_words_and_utc_dates() {
        assert_eq!(expiry_text(0, false), "never expires");
        assert_eq!(
            expiry_text(1_795_000_000_000, false),
            "expires 2026-11-18 11:06:40Z"
        );
        assert_eq!(
            expiry_text(1_795_000_000_000, true),
            "expired 2026-11-18 11:06:40Z"
        );
        assert_eq!(purposes_text(&[]), "any purpose");
        assert_eq!(
            purposes_text(&["fulfillment".into(), "support".into()]),
            "purposes fulfillment,support"
        );
    }
}
