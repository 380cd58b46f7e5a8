//! Finding records by the value of an indexed field (`FindRecords`): the purpose binding, the
//! `find` permission for the field and purpose, the value normalized and digested under the
//! field's index key, the ids looked up in the blind index, then each record read as `get`
//! reads it. The audit log gets one event for the find (the field searched and the number of
//! matches, never the value) and the read events of every record returned, in one batch.

use super::{Decider, Error, RecordView, Vault, check_purpose, index, outcomes};
use crate::{
    audit::{Call, Event},
    crypto::IndexDigest,
    domain::{Collection, FieldValue, InvalidInput, Principal, Purpose, RecordId},
    storage::Batch,
};

/// The most records one `find` returns; more matches are reported as truncated.
pub const FIND_LIMIT: usize = 100;

/// The most ids `lookup_ids` returns: more matches fail the lookup rather than act on part.
pub const LOOKUP_LIMIT: usize = 10_000;

/// A find's answer.
#[derive(Debug)]
pub struct Found {
    /// Each matching record as `get` shows it, in index order.
    pub records: Vec<RecordView>,
    /// More records matched than `FIND_LIMIT`; only the first are returned.
    pub truncated: bool,
}

/// What to find: records of `collection` whose indexed `field` has `value`, for `purpose`.
pub struct FindQuery<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The indexed field searched.
    pub field: &'a str,
    /// The value, in any spelling its type accepts. Not printed by `Debug`.
    pub value: &'a str,
    /// The declared purpose.
    pub purpose: &'a Purpose,
}

impl std::fmt::Debug for FindQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FindQuery")
            .field("collection", &self.collection)
            .field("field", &self.field)
            .field("value", &"<redacted>")
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// What a lookup checked and found.
struct Lookup<'s> {
    collection: &'s Collection,
    field: usize,
    policy_version: u64,
    ids: Vec<RecordId>,
    truncated: bool,
}

impl Vault {
    /// Finds the records the query matches (the value in any equivalent spelling), and reads
    /// each as `get` would for the query's purpose (`fields` as in `get`).
    ///
    /// # Errors
    /// `PermissionDenied` if the token may not declare `purpose` or the policy gives no `find`
    /// on the field for it; `InvalidArgument` for an unknown collection or field, a field that
    /// is not indexed, or a value that is not valid for the field's type; `DataLoss`,
    /// `Unavailable` as for reads.
    pub async fn find(
        &self,
        principal: &Principal,
        call: &Call,
        query: &FindQuery<'_>,
        fields: &[String],
    ) -> Result<Found, Error> {
        self.check_count(fields.len(), "fields")?;
        let purpose = query.purpose;
        let found = self.lookup(principal, query, FIND_LIMIT)?;
        let mut records = Vec::with_capacity(found.ids.len());
        let mut decider = Decider::new(&self.policy);
        let mut events = Vec::new();
        for id in &found.ids {
            match self.read_record(principal, call, id, fields, purpose, &mut decider) {
                Ok((view, owed)) => {
                    records.push(view);
                    events.extend(owed);
                }
                // Shredded since the lookup: not a match any more.
                Err(Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let name = found.collection.name().as_str();
        let truncated = if found.truncated {
            format!("; more matched, only the first {FIND_LIMIT} returned")
        } else {
            String::new()
        };
        events.push(Event {
            collection: name.to_owned(),
            fields: outcomes(found.collection, std::iter::once((found.field, "searched"))),
            purpose: purpose.as_str().to_owned(),
            policy_version: found.policy_version,
            detail: format!("{} matches{truncated}", records.len()),
            ..call.event(principal)
        });
        // Fail closed: nothing leaves unless the find's events are durable.
        self.audit.commit(Batch::new(), events).await?;
        Ok(Found {
            records,
            truncated: found.truncated,
        })
    }

    /// The ids of the records of `collection` whose indexed `field` has `value`, with the same
    /// checks as `find`, and nothing read or audited (the caller audits what it does with
    /// them). For subject-access export and erasure by lookup.
    ///
    /// # Errors
    /// As `find`; `Aborted` if more than `LOOKUP_LIMIT` records match (nothing should act on
    /// part of them).
    pub fn lookup_ids(
        &self,
        principal: &Principal,
        collection: &str,
        field: &str,
        value: &str,
        purpose: &Purpose,
    ) -> Result<Vec<RecordId>, Error> {
        let query = FindQuery {
            collection,
            field,
            value,
            purpose,
        };
        let found = self.lookup(principal, &query, LOOKUP_LIMIT)?;
        if found.truncated {
            return Err(Error::Aborted(format!(
                "more than {LOOKUP_LIMIT} records match; narrow the lookup"
            )));
        }
        Ok(found.ids)
    }

    fn lookup(
        &self,
        principal: &Principal,
        query: &FindQuery<'_>,
        limit: usize,
    ) -> Result<Lookup<'_>, Error> {
        let purpose = query.purpose;
        check_purpose(principal, purpose)?;
        let collection = self.schema.collection(query.collection, "collection")?;
        let (i, ty) = collection.field(query.field, "field")?;
        if !collection.is_indexed(i) {
            let indexed: Vec<&str> = (0..collection.fields().len())
                .filter(|&f| collection.is_indexed(f))
                .map(|f| collection.fields()[f].0.as_str())
                .collect();
            return Err(InvalidInput::new(
                "field",
                format!(
                    "{}.{} is not indexed: records can be found by {}",
                    collection.name(),
                    collection.fields()[i].0,
                    if indexed.is_empty() {
                        "no field of this collection".to_owned()
                    } else {
                        indexed.join(", ")
                    }
                ),
            )
            .into());
        }
        let permit = self
            .policy
            .table()
            .check_find(principal, collection, i, purpose)
            .map_err(|r| {
                Error::PermissionDenied(format!(
                    "{} (roles {}) may not find records by {} for purpose {purpose}",
                    principal.subject,
                    principal.roles_text(),
                    r.object
                ))
            })?;
        // Parse errors name `value` and never repeat it.
        let value = FieldValue::parse(query.value, ty, self.limits.max_value_bytes, "value")?;
        let digest: IndexDigest = index::digest_of(&self.index, collection, i, &value)?
            .ok_or_else(|| Error::Internal("an indexed field without an index form".into()))?;
        let (ids, truncated) = index::lookup(
            self.store.as_ref(),
            collection.name().as_str(),
            collection.fields()[i].0.as_str(),
            &digest,
            limit,
        )?;
        Ok(Lookup {
            collection,
            field: i,
            policy_version: permit.policy_version(),
            ids,
            truncated,
        })
    }
}
