//! The `Holds` service: place, release and list legal holds (`holds manage`). Parses requests
//! into domain values, calls one use case, shapes the answer. A placement and a release are
//! audited by the vault's event on success, every call by a failure event otherwise, a list by
//! one event for the call; none of them carries a hold's reason.

use std::{fmt, sync::Arc};

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, holds_server::Holds},
    status::{Known, audited, recorded},
};
use crate::{
    audit::Call,
    domain::{InvalidInput, RecordId},
    vault::{
        Error, Vault,
        holds::{Hold, HoldFilter, HoldReason, parse_hold_id},
    },
};

/// The `Holds` gRPC service.
#[derive(Debug, Clone)]
pub struct HoldsApi {
    vault: Arc<Vault>,
}

impl HoldsApi {
    /// The service over a vault.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

impl fmt::Debug for pb::PlaceHoldRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaceHoldRequest")
            .field("record_id", &self.record_id)
            .field("reason", &"<redacted>")
            .field("until_unix_ms", &self.until_unix_ms)
            .finish()
    }
}

impl fmt::Debug for pb::LegalHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegalHold")
            .field("record_id", &self.record_id)
            .field("hold_id", &self.hold_id)
            .field("reason", &"<redacted>")
            .field("placed_by", &self.placed_by)
            .field("placed_at_unix_ms", &self.placed_at_unix_ms)
            .field("until_unix_ms", &self.until_unix_ms)
            .field("released_by", &self.released_by)
            .field("released_at_unix_ms", &self.released_at_unix_ms)
            .field("active", &self.active)
            .finish()
    }
}

/// A parsed `PlaceHoldRequest`.
struct Placement {
    id: RecordId,
    reason: HoldReason,
    until_ms: Option<i64>,
}

impl TryFrom<pb::PlaceHoldRequest> for Placement {
    type Error = InvalidInput;

    fn try_from(value: pb::PlaceHoldRequest) -> Result<Self, Self::Error> {
        let pb::PlaceHoldRequest {
            record_id,
            reason,
            until_unix_ms,
        } = value;
        let id = RecordId::parse(&record_id, "record_id")?;
        let reason = HoldReason::parse(&reason, "reason")?;
        let until_ms = match until_unix_ms {
            0 => None,
            ms if ms < 0 => {
                return Err(InvalidInput::new(
                    "until_unix_ms",
                    "must be ms since the Unix epoch, or 0 for until released",
                ));
            }
            ms => Some(ms),
        };
        Ok(Self {
            id,
            reason,
            until_ms,
        })
    }
}

/// A parsed `ReleaseHoldRequest`.
struct Releasing {
    id: RecordId,
    hold_id: String,
}

impl TryFrom<pb::ReleaseHoldRequest> for Releasing {
    type Error = InvalidInput;

    fn try_from(value: pb::ReleaseHoldRequest) -> Result<Self, Self::Error> {
        let pb::ReleaseHoldRequest { record_id, hold_id } = value;
        Ok(Self {
            id: RecordId::parse(&record_id, "record_id")?,
            hold_id: parse_hold_id(&hold_id, "hold_id")?,
        })
    }
}

impl TryFrom<pb::ListHoldsRequest> for HoldFilter {
    type Error = InvalidInput;

    fn try_from(value: pb::ListHoldsRequest) -> Result<Self, Self::Error> {
        let pb::ListHoldsRequest {
            record_id,
            include_inactive,
            limit,
            after_record_id,
        } = value;
        let optional = |s: &str, field: &str| -> Result<Option<RecordId>, InvalidInput> {
            if s.is_empty() {
                Ok(None)
            } else {
                RecordId::parse(s, field).map(Some)
            }
        };
        Ok(Self {
            record: optional(&record_id, "record_id")?,
            include_inactive,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            after: optional(&after_record_id, "after_record_id")?,
        })
    }
}

/// A hold on the wire, with whether it is in force at `now_ms`.
fn to_pb(id: &RecordId, hold: Hold, now_ms: i64) -> pb::LegalHold {
    let active = hold.is_active(now_ms);
    let Hold {
        id: hold_id,
        reason,
        placed_by,
        placed_at_ms,
        until_ms,
        released,
    } = hold;
    let (released_by, released_at_unix_ms) =
        released.map_or((String::new(), 0), |r| (r.by, r.at_ms));
    pb::LegalHold {
        record_id: id.to_string(),
        hold_id,
        reason,
        placed_by,
        placed_at_unix_ms: placed_at_ms,
        until_unix_ms: until_ms.unwrap_or(0),
        released_by,
        released_at_unix_ms,
        active,
    }
}

#[tonic::async_trait]
impl Holds for HoldsApi {
    async fn place_hold(
        &self,
        request: Request<pb::PlaceHoldRequest>,
    ) -> Result<Response<pb::PlaceHoldResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Holds/PlaceHold");
        let mut known = Known::default();
        let result = async {
            let Placement {
                id,
                reason,
                until_ms,
            } = Placement::try_from(request.into_inner())?;
            known.record_id = id.to_string();
            let hold = self
                .vault
                .place_hold(&caller, &call, &id, reason, until_ms)
                .await?;
            Ok::<_, Error>((id, hold))
        }
        .await;
        let (id, hold) = audited(self.vault.audit(), &caller, &call, known, result).await?;
        let now = self.vault.clock().now_ms();
        Ok(Response::new(pb::PlaceHoldResponse {
            hold: Some(to_pb(&id, hold, now)),
        }))
    }

    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Holds/ReleaseHold");
        let mut known = Known::default();
        let result = async {
            let Releasing { id, hold_id } = Releasing::try_from(request.into_inner())?;
            known.record_id = id.to_string();
            let hold = self
                .vault
                .release_hold(&caller, &call, &id, &hold_id)
                .await?;
            Ok::<_, Error>((id, hold))
        }
        .await;
        let (id, hold) = audited(self.vault.audit(), &caller, &call, known, result).await?;
        let now = self.vault.clock().now_ms();
        Ok(Response::new(pb::ReleaseHoldResponse {
            hold: Some(to_pb(&id, hold, now)),
        }))
    }

    async fn list_holds(
        &self,
        request: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Holds/ListHolds");
        let result = HoldFilter::try_from(request.into_inner())
            .map_err(Error::from)
            .and_then(|filter| self.vault.list_holds(&caller, &filter));
        let list = recorded(self.vault.audit(), &caller, &call, result).await?;
        let now = list.now_ms;
        Ok(Response::new(pb::ListHoldsResponse {
            holds: list
                .holds
                .into_iter()
                .map(|(id, h)| to_pb(&id, h, now))
                .collect(),
            next_after_record_id: list.next_after.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }
}
