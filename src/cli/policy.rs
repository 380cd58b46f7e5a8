//! `strongroom policy ...`: policy administration for security admins.

use std::{io::IsTerminal, path::PathBuf};

use clap::{ArgGroup, Subcommand};
use serde_json::json;

use super::{Remote, connect, status_text, when};
use crate::{api::pb, client::Client};

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Print the current policy (or a version) with who applied it and why.
    Show {
        /// The version to show; the current one by default.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Apply a policy file as the next version (prints the dry-run and asks first).
    Apply {
        /// The policy file (casbin CSV lines).
        file: PathBuf,
        /// Why: kept with the version.
        #[arg(long, default_value = "")]
        comment: String,
        /// Apply only if the current version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Rules and decisions that differ between two versions (default: previous and current).
    Diff {
        /// The older version.
        from: Option<u64>,
        /// The newer version.
        to: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every decision a policy file would change, without applying it.
    DryRun {
        /// The candidate policy file.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// May a subject or role do an action on a field for a purpose, and why.
    #[command(group(ArgGroup::new("who").required(true).args(["subject", "role"])))]
    Explain {
        /// A subject, e.g. svc:crm.
        #[arg(long)]
        subject: Option<String>,
        /// A role, e.g. role:support.
        #[arg(long)]
        role: Option<String>,
        /// read, read_masked, read_pseudonym, write or delete.
        #[arg(long, default_value = "read")]
        action: String,
        /// The field, as collection.field (collection.* for delete).
        #[arg(long)]
        field: String,
        /// The declared purpose (reads).
        #[arg(long, default_value = "")]
        purpose: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// The changes waiting for a second policy admin's approval.
    Pending {
        #[command(flatten)]
        remote: Remote,
    },
    /// Approve a pending change proposed by another subject, and apply it.
    Approve {
        /// The pending change's id (from `policy pending`).
        id: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Reject a pending change (or withdraw one's own).
    Reject {
        /// The pending change's id.
        id: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every version: who applied it, when, and why.
    History {
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-apply an earlier version as a new version (prints the dry-run and asks first).
    Rollback {
        /// The version to go back to.
        version: u64,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Roll back only if the current version is this one.
        #[arg(long)]
        expected_version: Option<u64>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

fn read_file(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn info_json(v: &pb::PolicyVersionInfo) -> serde_json::Value {
    json!({
        "version": v.version, "applied_by": v.applied_by, "applied_at_unix_ms": v.applied_at_unix_ms,
        "comment": v.comment, "from_version": v.from_version, "rule_count": v.rule_count,
        "decisions_changed": v.decisions_changed, "approved_by": v.approved_by,
    })
}

fn changes_json(changes: &[pb::DecisionChange]) -> serde_json::Value {
    changes
        .iter()
        .map(|c| {
            json!({"principal": c.principal, "object": c.object, "action": c.action,
                   "purpose": c.purpose, "before": c.before, "after": c.after})
        })
        .collect()
}

fn print_changes(changes: &[pb::DecisionChange]) {
    if changes.is_empty() {
        println!("no decision changes");
        return;
    }
    println!("{} decision change(s):", changes.len());
    for c in changes {
        let purpose = if c.purpose == "*" {
            String::new()
        } else {
            format!(" for {}", c.purpose)
        };
        println!(
            "  {:<24} {:<6} {:<28}{purpose}: {} -> {}",
            c.principal, c.action, c.object, c.before, c.after
        );
    }
}

fn print_info(v: &pb::PolicyVersionInfo) {
    let comment = if v.comment.is_empty() {
        String::new()
    } else {
        format!(": {}", v.comment)
    };
    let approved = if v.approved_by.is_empty() {
        String::new()
    } else {
        format!(", approved by {}", v.approved_by)
    };
    println!(
        "version {} by {}{approved} at {} (from {}, {} rules, {} decisions changed){comment}",
        v.version,
        v.applied_by,
        when(v.applied_at_unix_ms),
        v.from_version,
        v.rule_count,
        v.decisions_changed
    );
}

fn pending_json(p: &pb::PendingPolicy) -> serde_json::Value {
    json!({
        "id": p.id, "proposed_by": p.proposed_by, "proposed_at_unix_ms": p.proposed_at_unix_ms,
        "comment": p.comment, "against_version": p.against_version, "reasons": p.reasons,
        "decisions_changed": p.decisions_changed, "status": p.status, "decided_by": p.decided_by,
    })
}

fn print_pending(p: &pb::PendingPolicy) {
    let comment = if p.comment.is_empty() {
        String::new()
    } else {
        format!(": {}", p.comment)
    };
    println!(
        "pending change {} by {} at {} (against version {}, {} decisions would change){comment}",
        p.id,
        p.proposed_by,
        when(p.proposed_at_unix_ms),
        p.against_version,
        p.decisions_changed
    );
    for r in &p.reasons {
        println!("  needs a second approver: {r}");
    }
}

/// Prints what an apply, rollback or approval did: the version applied, or the pending change.
fn print_outcome(r: &pb::ApplyPolicyResponse, json: bool, done: &str) {
    match (&r.pending, json) {
        (Some(p), true) => println!(
            "{}",
            json!({"pending": pending_json(p), "changes": changes_json(&r.changes)})
        ),
        (Some(p), false) => {
            println!(
                "NOT applied yet: this change escalates and waits for a second policy admin \
                 (`strongroom policy approve {}`)",
                p.id
            );
            print_pending(p);
        }
        (None, true) => {
            let info = r.version.clone().unwrap_or_default();
            println!(
                "{}",
                json!({"version": info_json(&info), "changes": changes_json(&r.changes)})
            );
        }
        (None, false) => {
            print!("{done}: ");
            print_info(&r.version.clone().unwrap_or_default());
        }
    }
}

fn confirm(question: &str) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "refusing to change the policy without confirmation: stdin is not a terminal; \
             pass --yes"
                .into(),
        );
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// The one path of every change to the live policy (`apply` and `rollback`): shows every
/// decision that `text` would change against the current version, then asks on a terminal
/// (`--yes` is required off one). Returns the version the dry-run was made against, so the
/// change can be made only if nothing was applied in between.
async fn preview_and_confirm(
    c: &mut Client,
    text: String,
    json: bool,
    yes: bool,
    question: &str,
) -> Result<u64, String> {
    let dry = c
        .policies
        .dry_run_policy(pb::DryRunPolicyRequest { text })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    if !json {
        println!("against version {}:", dry.against_version);
        print_changes(&dry.changes);
    }
    if !yes && !confirm(question)? {
        return Err("not applied: the policy is unchanged".into());
    }
    Ok(dry.against_version)
}

pub(super) async fn policy(command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Show { version, remote } => {
            let mut c = connect(&remote).await?;
            let v = c
                .policies
                .get_policy(pb::GetPolicyRequest { version })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            let info = v.info.unwrap_or_default();
            if remote.json {
                println!("{}", json!({"info": info_json(&info), "text": v.text}));
            } else {
                print_info(&info);
                println!();
                print!("{}", v.text);
            }
        }
        PolicyCommand::Apply {
            file,
            comment,
            expected_version,
            yes,
            remote,
        } => {
            let text = read_file(&file)?;
            let mut c = connect(&remote).await?;
            let against =
                preview_and_confirm(&mut c, text.clone(), remote.json, yes, "apply this policy?")
                    .await?;
            let applied = c
                .policies
                .apply_policy(pb::ApplyPolicyRequest {
                    text,
                    comment,
                    // Guard against a change applied between the dry-run and now.
                    expected_version: expected_version.or(Some(against)),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            print_outcome(&applied, remote.json, "applied");
        }
        PolicyCommand::Diff { from, to, remote } => {
            let mut c = connect(&remote).await?;
            let to = match to {
                Some(v) => v,
                None => {
                    c.policies
                        .get_policy(pb::GetPolicyRequest { version: None })
                        .await
                        .map_err(|s| status_text(&s))?
                        .into_inner()
                        .info
                        .unwrap_or_default()
                        .version
                }
            };
            let from = from.unwrap_or(to.saturating_sub(1).max(1));
            let d = c
                .policies
                .diff_policy(pb::DiffPolicyRequest {
                    from_version: from,
                    to_version: to,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!(
                    "{}",
                    json!({"from": from, "to": to, "removed_rules": d.removed_rules,
                           "added_rules": d.added_rules, "changes": changes_json(&d.changes)})
                );
            } else {
                println!("version {from} -> {to}");
                for r in &d.removed_rules {
                    println!("- {r}");
                }
                for r in &d.added_rules {
                    println!("+ {r}");
                }
                print_changes(&d.changes);
            }
        }
        PolicyCommand::DryRun { file, remote } => {
            let text = read_file(&file)?;
            let mut c = connect(&remote).await?;
            let dry = c
                .policies
                .dry_run_policy(pb::DryRunPolicyRequest { text })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!(
                    "{}",
                    json!({"against_version": dry.against_version, "changes": changes_json(&dry.changes)})
                );
            } else {
                println!("against version {}:", dry.against_version);
                print_changes(&dry.changes);
            }
        }
        PolicyCommand::Explain {
            subject,
            role,
            action,
            field,
            purpose,
            remote,
        } => {
            let principal = subject.or(role).unwrap_or_default();
            let mut c = connect(&remote).await?;
            let e = c
                .policies
                .explain(pb::ExplainRequest {
                    principal: principal.clone(),
                    action: action.clone(),
                    object: field.clone(),
                    purpose: purpose.clone(),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                let matched: Vec<_> = e
                    .matched
                    .iter()
                    .map(
                        |m| json!({"line": m.line, "rule": m.rule, "via": m.via, "allow": m.allow}),
                    )
                    .collect();
                println!(
                    "{}",
                    json!({"outcome": e.outcome, "summary": e.summary, "policy_version": e.policy_version, "matched": matched})
                );
            } else {
                let purpose = if purpose.is_empty() {
                    String::new()
                } else {
                    format!(" for {purpose}")
                };
                println!(
                    "{principal} {action} {field}{purpose}: {} (policy version {})",
                    e.outcome, e.policy_version
                );
                println!("  {}", e.summary);
                for m in &e.matched {
                    println!(
                        "  line {:>4}: {}   (via {})",
                        m.line,
                        m.rule,
                        m.via.join(" -> ")
                    );
                }
            }
        }
        PolicyCommand::Pending { remote } => {
            let mut c = connect(&remote).await?;
            let list = c
                .policies
                .list_pending_policies(pb::ListPendingPoliciesRequest {})
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                let pending: Vec<_> = list.pending.iter().map(pending_json).collect();
                println!("{}", json!({"pending": pending}));
            } else if list.pending.is_empty() {
                println!("no pending changes");
            } else {
                for p in &list.pending {
                    print_pending(p);
                }
            }
        }
        PolicyCommand::Approve { id, remote } => {
            let mut c = connect(&remote).await?;
            let applied = c
                .policies
                .approve_policy(pb::ApprovePolicyRequest { id })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            print_outcome(&applied, remote.json, "approved and applied");
        }
        PolicyCommand::Reject { id, remote } => {
            let mut c = connect(&remote).await?;
            let p = c
                .policies
                .reject_policy(pb::RejectPolicyRequest { id })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", pending_json(&p));
            } else {
                println!("pending change {} {} by {}", p.id, p.status, p.decided_by);
            }
        }
        PolicyCommand::History { remote } => {
            let mut c = connect(&remote).await?;
            let list = c
                .policies
                .list_policy_versions(pb::ListPolicyVersionsRequest {})
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                let versions: Vec<_> = list.versions.iter().map(info_json).collect();
                println!("{}", json!({"versions": versions}));
            } else {
                for v in &list.versions {
                    print_info(v);
                }
            }
        }
        PolicyCommand::Rollback {
            version,
            comment,
            expected_version,
            yes,
            remote,
        } => {
            let mut c = connect(&remote).await?;
            let target = c
                .policies
                .get_policy(pb::GetPolicyRequest {
                    version: Some(version),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner()
                .text;
            let question = format!("roll back to the text of version {version}?");
            let against = preview_and_confirm(&mut c, target, remote.json, yes, &question).await?;
            let applied = c
                .policies
                .rollback_policy(pb::RollbackPolicyRequest {
                    to_version: version,
                    comment,
                    // Guard against a change applied between the dry-run and now.
                    expected_version: expected_version.or(Some(against)),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            print_outcome(&applied, remote.json, "rolled back");
        }
    }
    Ok(())
}
