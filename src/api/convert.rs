//! Protobuf <-> domain conversions, and `Debug` for the messages that carry field values or
//! tokens (generated with `skip_debug`): they print names, never values.

use std::fmt;

use super::pb;
use crate::{
    domain::InvalidInput,
    policy::Decision,
    vault::{FieldInput, FieldView, ShredReceipt},
};

impl fmt::Debug for pb::Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for pb::FieldResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldResult")
            .field("name", &self.name)
            .field("disclosure", &self.disclosure)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for pb::FindRecordsRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FindRecordsRequest")
            .field("collection", &self.collection)
            .field("field", &self.field)
            .field("value", &"<redacted>")
            .field("purpose", &self.purpose)
            .field("fields", &self.fields)
            .finish()
    }
}

impl fmt::Debug for pb::Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("collection", &self.collection)
            .field("field", &self.field)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for pb::ExportSubjectResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportSubjectResponse")
            .field("document", &"<redacted>")
            .field("signature", &self.signature)
            .field("record_ids", &self.record_ids)
            .finish()
    }
}

impl fmt::Debug for pb::CreateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateTokenResponse")
            .field("token", &"<redacted>")
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .field("expires_at_unix_ms", &self.expires_at_unix_ms)
            .field("purposes", &self.purposes)
            .field("id", &self.id)
            .finish()
    }
}

impl fmt::Debug for pb::RotateTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateTokenResponse")
            .field("token", &"<redacted>")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .field("purposes", &self.purposes)
            .field("expires_at_unix_ms", &self.expires_at_unix_ms)
            .field("old_id", &self.old_id)
            .field("old_expires_at_unix_ms", &self.old_expires_at_unix_ms)
            .finish()
    }
}

/// Refuses a list of more than `max` entries, before anything is done or allocated per entry
/// (a 1 MiB message holds 500,000 empty fields).
///
/// # Errors
/// `InvalidInput` naming `input` and the limit.
pub(super) fn check_count(n: usize, max: usize, input: &str) -> Result<(), InvalidInput> {
    if n > max {
        return Err(InvalidInput::new(
            input,
            format!("{n} fields, more than the limit of {max}"),
        ));
    }
    Ok(())
}

/// Refuses a batch of more than `max` items, before anything is parsed per item.
///
/// # Errors
/// `InvalidInput` naming `input` and the limit.
pub(super) fn check_batch(n: usize, max: usize, input: &str) -> Result<(), InvalidInput> {
    if n > max {
        return Err(InvalidInput::new(
            input,
            format!("{n} items, more than the limit of {max}"),
        ));
    }
    Ok(())
}

/// The fields of a write, borrowed from the request, with their position for error messages.
/// Call `check_count` first: this allocates per field.
pub(super) fn field_inputs<'a>(
    fields: &'a [pb::Field],
    input: &'static str,
) -> Vec<FieldInput<'a>> {
    fields
        .iter()
        .enumerate()
        .map(|(index, f)| FieldInput {
            input,
            index,
            name: &f.name,
            value: &f.value,
        })
        .collect()
}

impl From<Decision> for pb::Disclosure {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Denied => Self::Withheld,
            Decision::Masked => Self::Masked,
            Decision::Plain => Self::Plain,
            Decision::Pseudonym => Self::Pseudonym,
        }
    }
}

/// One field of a read, for the wire. `purpose` and `roles` explain a withheld field.
pub(super) fn field_result(
    view: FieldView,
    collection: &str,
    roles: &str,
    purpose: &str,
) -> pb::FieldResult {
    let reason = match (view.decision, view.withheld_reason) {
        (Decision::Denied, Some(reason)) => reason,
        (Decision::Denied, None) => format!(
            "withheld: no rule lets {roles} read {collection}.{} for purpose {purpose}",
            view.name
        ),
        (Decision::Masked | Decision::Plain | Decision::Pseudonym, _) => String::new(),
    };
    pb::FieldResult {
        name: view.name,
        disclosure: pb::Disclosure::from(view.decision).into(),
        value: view
            .value
            .map(|v| v.expose().to_owned())
            .unwrap_or_default(),
        reason,
    }
}

/// One field of an exported record: as `field_result`, but a field the policy withholds (from
/// every record alike) carries no per-record reason.
pub(super) fn exported_field(view: FieldView) -> pb::FieldResult {
    pb::FieldResult {
        name: view.name,
        disclosure: pb::Disclosure::from(view.decision).into(),
        value: view
            .value
            .map(|v| v.expose().to_owned())
            .unwrap_or_default(),
        reason: view.withheld_reason.unwrap_or_default(),
    }
}

impl From<ShredReceipt> for pb::ShredReceipt {
    fn from(r: ShredReceipt) -> Self {
        Self {
            id: r.id.to_string(),
            collection: r.collection,
            shredded_at_unix_ms: r.shredded_at_ms,
            data_key_destroyed: true,
            fields_destroyed: r.fields_destroyed,
            purged_at_unix_ms: r.purged_at_ms.unwrap_or(0),
            purge_pending: r.purged_at_ms.is_none(),
            unrecoverable_after_unix_ms: r.unrecoverable_after_ms.unwrap_or(0),
            signed_document: r
                .signed
                .as_ref()
                .map(|s| s.document.clone())
                .unwrap_or_default(),
            signature: r.signed.map(|s| s.signature).unwrap_or_default(),
        }
    }
}
