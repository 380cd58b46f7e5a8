//! The `Consent` service: records a consent grant, revocation or opt-out on a record's ledger
//! (`consent manage`) and shows the ledger (`consent read`). Parses, calls the vault, maps the
//! result; a failure is audited by the shared helper.

use std::{fmt, sync::Arc};

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, consent_server::Consent},
    status::{Known, audited},
};
use crate::{
    audit::Call,
    domain::{ConsentSource, EvidenceHash, InvalidInput, RecordId},
    vault::{
        Vault,
        consent::{ConsentChange, ConsentTarget, Ledger, LedgerChange, LedgerEntry},
    },
};

/// The `Consent` gRPC service.
#[derive(Debug, Clone)]
pub struct ConsentApi {
    vault: Arc<Vault>,
}

impl ConsentApi {
    /// The service over a vault.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

impl fmt::Debug for pb::SetConsentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetConsentRequest")
            .field("record_id", &self.record_id)
            .field(
                "change",
                &self.change.as_ref().map(|c| -> &dyn fmt::Debug {
                    match c {
                        pb::set_consent_request::Change::Consent(c) => c,
                        pb::set_consent_request::Change::OptOut(o) => o,
                    }
                }),
            )
            .field("source", &"<redacted>")
            .field("evidence_sha256", &self.evidence_sha256)
            .finish()
    }
}

impl fmt::Debug for pb::ConsentEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsentEntry")
            .field("seq", &self.seq)
            .field(
                "change",
                &self.change.as_ref().map(|c| -> &dyn fmt::Debug {
                    match c {
                        pb::consent_entry::Change::Consent(c) => c,
                        pb::consent_entry::Change::OptOut(o) => o,
                    }
                }),
            )
            .field("at_unix_ms", &self.at_unix_ms)
            .field("by", &self.by)
            .field("source", &"<redacted>")
            .field("evidence_sha256", &self.evidence_sha256)
            .finish()
    }
}

impl TryFrom<pb::SetConsentRequest> for ConsentChange {
    type Error = InvalidInput;

    fn try_from(request: pb::SetConsentRequest) -> Result<Self, InvalidInput> {
        let pb::SetConsentRequest {
            record_id,
            change,
            source,
            evidence_sha256,
        } = request;
        let id = RecordId::parse(&record_id, "record_id")?;
        let target = match change {
            Some(pb::set_consent_request::Change::Consent(pb::ConsentChange {
                purpose,
                channel,
                granted,
            })) => ConsentTarget::Consent {
                purpose,
                channel,
                granted,
            },
            Some(pb::set_consent_request::Change::OptOut(pb::OptOutChange { flag, set })) => {
                ConsentTarget::OptOut { flag, set }
            }
            None => {
                return Err(InvalidInput::new(
                    "change",
                    "give a consent (purpose, channel, granted) or an opt_out (flag, set)",
                ));
            }
        };
        let source = ConsentSource::parse(&source, "source")?;
        let evidence = if evidence_sha256.is_empty() {
            None
        } else {
            Some(EvidenceHash::parse(&evidence_sha256, "evidence_sha256")?)
        };
        Ok(Self {
            id,
            target,
            source,
            evidence,
        })
    }
}

fn entry_to_pb(e: LedgerEntry) -> pb::ConsentEntry {
    let LedgerEntry {
        seq,
        change,
        at_ms,
        by,
        source,
        evidence_sha256,
    } = e;
    let change = match change {
        LedgerChange::Consent {
            purpose,
            channel,
            granted,
        } => pb::consent_entry::Change::Consent(pb::ConsentChange {
            purpose,
            channel,
            granted,
        }),
        LedgerChange::OptOut { flag, set } => {
            pb::consent_entry::Change::OptOut(pb::OptOutChange { flag, set })
        }
    };
    pb::ConsentEntry {
        seq,
        change: Some(change),
        at_unix_ms: at_ms,
        by,
        source,
        evidence_sha256: evidence_sha256.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Consent for ConsentApi {
    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SetConsentResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Consent/SetConsent");
        let mut known = Known::default();
        let result = async {
            let change = ConsentChange::try_from(request.into_inner())?;
            known.record_id = change.id.to_string();
            self.vault.set_consent(&caller, &call, change).await
        }
        .await;
        let entry = audited(self.vault.audit(), &caller, &call, known, result).await?;
        Ok(Response::new(pb::SetConsentResponse {
            entry: Some(entry_to_pb(entry)),
        }))
    }

    async fn get_consent(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::GetConsentResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Consent/GetConsent");
        let pb::GetConsentRequest { record_id } = request.into_inner();
        let mut known = Known::default();
        let result = async {
            let id = RecordId::parse(&record_id, "record_id")?;
            known.record_id = id.to_string();
            let ledger = self.vault.consent(&caller, &call, &id).await?;
            Ok((id, ledger))
        }
        .await;
        let (id, ledger) = audited(self.vault.audit(), &caller, &call, known, result).await?;
        let Ledger { state, history } = ledger;
        // Every declared opt-out, recorded or not, so that "not set" is said, not implied; then
        // any recorded one the schema no longer declares.
        let declared = self.vault.schema().consent().opt_outs();
        let mut opt_outs: Vec<pb::OptOutStatus> = declared
            .iter()
            .map(|o| {
                let recorded = state.opt_outs.iter().find(|s| s.flag == o.name());
                pb::OptOutStatus {
                    flag: o.name().to_owned(),
                    set: recorded.is_some_and(|s| s.set),
                    since_unix_ms: recorded.map_or(0, |s| s.since_ms),
                }
            })
            .collect();
        opt_outs.extend(
            state
                .opt_outs
                .iter()
                .filter(|s| declared.iter().all(|o| o.name() != s.flag))
                .map(|s| pb::OptOutStatus {
                    flag: s.flag.clone(),
                    set: s.set,
                    since_unix_ms: s.since_ms,
                }),
        );
        Ok(Response::new(pb::GetConsentResponse {
            record_id: id.to_string(),
            consents: state
                .consents
                .into_iter()
                .map(|c| pb::ConsentStatus {
                    purpose: c.purpose,
                    channel: c.channel,
                    granted: c.granted,
                    since_unix_ms: c.since_ms,
                })
                .collect(),
            opt_outs,
            history: history.into_iter().map(entry_to_pb).collect(),
        }))
    }
}
