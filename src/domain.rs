//! Domain types: record ids, collections and fields, field values and their types, principals,
//! purposes. A value of these types is valid by construction: parsing happens once, at the edge.
//!
//! No I/O here, and no dependency on tonic, RocksDB, casbin or the cipher.

mod clock;
mod consent;
mod duration;
mod field;
mod ids;
mod principal;
mod retention;
mod schema;

pub use clock::Clock;
pub use consent::{
    ConsentRules, ConsentSource, Denial, EvidenceHash, MAX_SOURCE_CHARS, Need, OptOut, PurposeRules,
};
pub use duration::{friendly, parse_duration};
pub use field::{FieldName, FieldType, FieldValue};
pub use ids::RecordId;
pub use principal::{Principal, Role, Subject};
pub use retention::{Anchor, Retention, RetentionRule};
pub use schema::{Collection, CollectionName, MAX_FIELDS_PER_COLLECTION, Purpose, Schema};

/// A value from outside that is not acceptable, with the name of the field that carried it.
///
/// `problem` never contains the offending value: values may be personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidInput {
    /// Which input was wrong, e.g. `fields[2].value` or `purpose`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl InvalidInput {
    /// An invalid-input error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Checks that `s` is a lowercase identifier: `[a-z][a-z0-9_]{0,63}`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && s.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}
