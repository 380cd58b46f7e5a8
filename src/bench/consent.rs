//! The `get-consent` workload's setup: what a read with consent checks costs next to the same
//! read without. The vault the bench starts gets the shipped policies plus one copy of the
//! support role's read rules for `telemarketing`, so that a support read for `telemarketing`
//! decides every field as a `support` read does, and only the schema's consent rules (the
//! phone needs `autodialer` consent and no `do_not_call`) add work: the ledger's state read
//! with the ciphertexts, decoded and checked. Every preloaded record is granted that consent,
//! so both reads return the same fields.

use std::{path::Path, sync::Arc, time::Duration};

use super::{load::drive, workloads::Clients};
use crate::api::pb;

/// The purpose whose consent rules the workload exercises.
pub(super) const PURPOSE: &str = "telemarketing";

/// A policies dir for the bench's vault under `dir`: `shipped` with the support role's read
/// rules copied for `PURPOSE`.
///
/// # Errors
/// A message if the shipped files cannot be read or the copy written.
pub(super) fn policies(shipped: &Path, dir: &Path) -> Result<std::path::PathBuf, String> {
    let out = dir.join("policies");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for name in ["model.conf", "schema.toml"] {
        std::fs::copy(shipped.join(name), out.join(name))
            .map_err(|e| format!("cannot copy {name}: {e}"))?;
    }
    let policy = std::fs::read_to_string(shipped.join("policy.csv"))
        .map_err(|e| format!("cannot read policy.csv: {e}"))?;
    let copies: String = policy
        .lines()
        .filter(|l| l.starts_with("p, role:support, customers.") && l.contains(", read"))
        .filter_map(|l| {
            let parts: Vec<&str> = l.split(", ").collect();
            (parts.len() == 6 && parts[4] == "support").then(|| {
                format!(
                    "p, role:support, {}, {}, {PURPOSE}, allow\n",
                    parts[2], parts[3]
                )
            })
        })
        .collect();
    if copies.is_empty() {
        return Err("the shipped policy has no support read rules to copy".into());
    }
    std::fs::write(
        out.join("policy.csv"),
        format!("{policy}\n# bench: support's reads, for {PURPOSE}\n{copies}"),
    )
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Grants every record of `ids` `autodialer` consent for `PURPOSE`, `in_flight` at a time.
///
/// # Errors
/// A message if a grant fails.
pub(super) async fn grant(
    clients: &Clients,
    ids: &[String],
    in_flight: usize,
) -> Result<(), String> {
    let ids = Arc::new(ids.to_vec());
    let admin = clients.admin.clone();
    let count = ids.len() as u64;
    let stats = drive(
        in_flight,
        Duration::from_secs(3600),
        Some(count),
        move |n| {
            let id = ids[n as usize % ids.len().max(1)].clone();
            let mut a = admin[n as usize % admin.len()].clone();
            async move {
                a.consent
                    .set_consent(pb::SetConsentRequest {
                        record_id: id,
                        change: Some(pb::set_consent_request::Change::Consent(
                            pb::ConsentChange {
                                purpose: PURPOSE.into(),
                                channel: "autodialer".into(),
                                granted: true,
                            },
                        )),
                        source: "bench:preload".into(),
                        evidence_sha256: String::new(),
                    })
                    .await
                    .map(|_| ())
                    .map_err(|s| super::workloads::status(&s))
            }
        },
    )
    .await;
    match stats.first_error {
        Some(e) => Err(format!("granting consent failed: {e}")),
        None => Ok(()),
    }
}
