//! Declared collections and purposes (`policies/schema.toml`): which fields a collection has,
//! of which type, and which purposes a read may declare. Records are not free-form.

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;

use super::{
    FieldName, FieldType, InvalidInput,
    consent::{ConsentFile, ConsentRules},
    is_identifier,
    retention::{self, Retention},
};

/// The most fields a collection may declare: a record's field manifest is a 64-bit set.
pub const MAX_FIELDS_PER_COLLECTION: usize = 64;

/// A declared collection's name, e.g. `customers`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionName(String);

impl CollectionName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A declared purpose of a read, e.g. `support`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Purpose(String);

impl Purpose {
    /// The purpose as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A declared collection: its fields in declaration order.
#[derive(Debug, Clone)]
pub struct Collection {
    name: CollectionName,
    fields: Vec<(FieldName, FieldType)>,
    /// Bit `i` set: field `i` is sensitive (a plaintext disclosure of it is counted against the
    /// reader's limits, and a policy change widening access to it needs a second approver).
    sensitive: u64,
    /// Bit `i` set: field `i` is declared `indexed` (a blind index finds records by it).
    indexed: u64,
    /// How long records and fields are kept (`[collections.NAME.retention]`).
    retention: Retention,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &CollectionName {
        &self.name
    }

    /// The declared fields, in declaration order.
    pub fn fields(&self) -> &[(FieldName, FieldType)] {
        &self.fields
    }

    /// Whether the field at `index` is declared `sensitive`.
    pub fn is_sensitive(&self, index: usize) -> bool {
        index < MAX_FIELDS_PER_COLLECTION && self.sensitive & (1 << index) != 0
    }

    /// Whether the field at `index` is declared `indexed`: records can be found by its value.
    pub fn is_indexed(&self, index: usize) -> bool {
        index < MAX_FIELDS_PER_COLLECTION && self.indexed & (1 << index) != 0
    }

    /// The collection's retention rules (none unless declared).
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// The index of a declared field.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|(f, _)| f.as_str() == name)
    }

    /// Parses a field name that must be declared in this collection.
    ///
    /// # Errors
    /// `InvalidInput` if the name is malformed or not declared.
    pub fn field(&self, name: &str, input: &str) -> Result<(usize, FieldType), InvalidInput> {
        FieldName::check(name, input)?;
        self.field_index(name)
            .map(|i| (i, self.fields[i].1))
            .ok_or_else(|| {
                // The caller's text is not repeated: only the declared names, which are ours.
                let declared: Vec<&str> = self.fields.iter().map(|(f, _)| f.as_str()).collect();
                InvalidInput::new(
                    input,
                    format!(
                        "unknown field in collection {}; its fields: {}",
                        self.name,
                        declared.join(", ")
                    ),
                )
            })
    }
}

/// Every declared collection and purpose, and the consent rules.
#[derive(Debug, Clone)]
pub struct Schema {
    collections: BTreeMap<String, Collection>,
    purposes: Vec<Purpose>,
    consent: ConsentRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    purposes: Vec<String>,
    collections: BTreeMap<String, CollectionFile>,
    #[serde(default)]
    consent: ConsentFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectionFile {
    /// Field name -> type, as an ordered list of single-entry tables or inline pairs.
    fields: Vec<FieldFile>,
    /// How long records and fields are kept.
    retention: Option<retention::RetentionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    name: String,
    #[serde(rename = "type")]
    ty: FieldType,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    indexed: bool,
}

impl Schema {
    /// Parses `schema.toml` text.
    ///
    /// # Errors
    /// `InvalidInput` naming the problem: TOML errors, unknown keys or types, bad or duplicate
    /// names, a collection without fields, no purposes, consent rules naming undeclared
    /// purposes, channels, opt-outs or fields.
    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        let file: SchemaFile =
            toml::from_str(text).map_err(|e| InvalidInput::new("schema.toml", e.to_string()))?;
        let mut purposes = Vec::new();
        for p in file.purposes {
            if !is_identifier(&p) {
                return Err(InvalidInput::new(
                    "schema.toml: purposes",
                    format!("{p:?} is not a lowercase identifier"),
                ));
            }
            if purposes.iter().any(|q: &Purpose| q.as_str() == p) {
                return Err(InvalidInput::new(
                    "schema.toml: purposes",
                    format!("{p:?} is declared twice"),
                ));
            }
            purposes.push(Purpose(p));
        }
        if purposes.is_empty() {
            return Err(InvalidInput::new(
                "schema.toml: purposes",
                "declare at least one purpose",
            ));
        }
        let mut collections = BTreeMap::new();
        for (name, c) in file.collections {
            let at = format!("schema.toml: collections.{name}");
            if !is_identifier(&name) {
                return Err(InvalidInput::new(
                    at,
                    "collection name must be a lowercase identifier",
                ));
            }
            if c.fields.is_empty() || c.fields.len() > MAX_FIELDS_PER_COLLECTION {
                return Err(InvalidInput::new(
                    at,
                    format!("declare between 1 and {MAX_FIELDS_PER_COLLECTION} fields"),
                ));
            }
            let mut fields: Vec<(FieldName, FieldType)> = Vec::new();
            let mut sensitive = 0u64;
            let mut indexed = 0u64;
            for f in c.fields {
                let field = FieldName::parse(&f.name, &at)?;
                if fields.iter().any(|(n, _)| *n == field) {
                    return Err(InvalidInput::new(
                        at,
                        format!("field {:?} is declared twice", f.name),
                    ));
                }
                if f.sensitive {
                    sensitive |= 1 << fields.len();
                }
                if f.indexed {
                    if !f.ty.is_indexable() {
                        return Err(InvalidInput::new(
                            at,
                            format!(
                                "field {:?} is of type {:?}, which has no index normalization: \
                                 only email, phone and ssn fields may be `indexed`",
                                f.name, f.ty
                            ),
                        ));
                    }
                    indexed |= 1 << fields.len();
                }
                fields.push((field, f.ty));
            }
            let retention = match c.retention {
                Some(file) => retention::parse(file, &at, |n| {
                    fields.iter().position(|(f, _)| f.as_str() == n)
                })?,
                None => Retention::default(),
            };
            let name = CollectionName(name);
            collections.insert(
                name.0.clone(),
                Collection {
                    name,
                    fields,
                    sensitive,
                    indexed,
                    retention,
                },
            );
        }
        if collections.is_empty() {
            return Err(InvalidInput::new(
                "schema.toml: collections",
                "declare at least one collection",
            ));
        }
        let consent = ConsentRules::parse(file.consent, &purposes, &collections)?;
        Ok(Self {
            collections,
            purposes,
            consent,
        })
    }

    /// The consent rules: channels, opt-outs, and what each purpose needs of a record.
    pub fn consent(&self) -> &ConsentRules {
        &self.consent
    }

    /// Looks up a declared collection.
    ///
    /// # Errors
    /// `InvalidInput` naming `input` if no such collection is declared.
    pub fn collection(&self, name: &str, input: &str) -> Result<&Collection, InvalidInput> {
        if name.is_empty() {
            return Err(InvalidInput::new(input, "collection is required"));
        }
        self.collections.get(name).ok_or_else(|| {
            let declared: Vec<&str> = self.collections.keys().map(String::as_str).collect();
            InvalidInput::new(
                input,
                format!("unknown collection; declared: {}", declared.join(", ")),
            )
        })
    }

    /// Every declared collection.
    pub fn collections(&self) -> impl Iterator<Item = &Collection> {
        self.collections.values()
    }

    /// Every declared purpose.
    pub fn purposes(&self) -> &[Purpose] {
        &self.purposes
    }

    /// The index of a declared purpose.
    pub fn purpose_index(&self, name: &str) -> Option<usize> {
        self.purposes.iter().position(|p| p.as_str() == name)
    }

    /// Parses a purpose that must be declared.
    ///
    /// # Errors
    /// `InvalidInput` naming `input` if the purpose is missing or not declared.
    pub fn purpose(&self, name: &str, input: &str) -> Result<(usize, Purpose), InvalidInput> {
        if name.is_empty() {
            return Err(InvalidInput::new(input, "a declared purpose is required"));
        }
        self.purpose_index(name)
            .map(|i| (i, self.purposes[i].clone()))
            .ok_or_else(|| {
                let known: Vec<&str> = self.purposes.iter().map(Purpose::as_str).collect();
                InvalidInput::new(
                    input,
                    format!("unknown purpose; declared: {}", known.join(", ")),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_schema_marks_ssn_card_and_birth_date_sensitive() {
        let schema = Schema::parse(include_str!("../../policies/schema.toml")).unwrap();
        let customers = schema.collection("customers", "c").unwrap();
        let sensitive: Vec<&str> = customers
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| customers.is_sensitive(*i))
            .map(|(_, (name, _))| name.as_str())
            .collect();
        assert_eq!(sensitive, ["date_of_birth", "ssn", "card_number"]);
        assert!(!customers.is_sensitive(64));
        let bad = Schema::parse(
            "purposes = [\"a\"]\n[collections.c]\nfields = [{ name = \"x\", type = \"ssn\", sensitive = \"yes\" }]\n",
        );
        assert!(bad.is_err());
    }

    #[test]
    fn the_shipped_schema_indexes_email_phone_and_ssn_only() {
        let schema = Schema::parse(include_str!("../../policies/schema.toml")).unwrap();
        let customers = schema.collection("customers", "c").unwrap();
        let indexed: Vec<&str> = customers
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| customers.is_indexed(*i))
            .map(|(_, (name, _))| name.as_str())
            .collect();
        assert_eq!(indexed, ["email", "phone", "ssn"]);
        let refused = Schema::parse(
            "purposes = [\"a\"]\n[collections.c]\nfields = [{ name = \"notes\", type = \"string\", indexed = true }]\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            refused.contains("\"notes\"") && refused.contains("only email, phone and ssn"),
            "{refused}"
        );
    }

    #[test]
    fn the_shipped_schema_keeps_cards_18_months_and_records_7_years() {
        let schema = Schema::parse(include_str!("../../policies/schema.toml")).unwrap();
        let customers = schema.collection("customers", "c").unwrap();
        let retention = customers.retention();
        assert_eq!(
            retention.record().map(ToString::to_string).as_deref(),
            Some("7 years after last_activity")
        );
        let fields: Vec<(&str, String)> = retention
            .fields()
            .iter()
            .map(|(i, r)| (customers.fields()[*i].0.as_str(), r.to_string()))
            .collect();
        assert_eq!(
            fields,
            [("card_number", "18 months after last_update".to_owned())]
        );
        let unknown = Schema::parse(
            "purposes = [\"a\"]\n[collections.c]\nfields = [{ name = \"x\", type = \"ssn\" }]\n\
             [collections.c.retention]\nfields = { y = { keep = \"1 year\", after = \"created\" } }\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            unknown.starts_with("schema.toml: collections.c.retention.fields.y:"),
            "{unknown}"
        );
        let typo = Schema::parse(
            "purposes = [\"a\"]\n[collections.c]\nfields = [{ name = \"x\", type = \"ssn\" }]\n\
             [collections.c.retention]\nrecord = { keep = \"1 year\", after = \"created\", for = 1 }\n",
        );
        assert!(typo.is_err());
    }

    #[test]
    fn fuzz_schema_toml() {
        use proptest::prelude::*;
        let shipped = include_str!("../../policies/schema.toml");
        let types = [
            "string",
            "name",
            "email",
            "phone",
            "ssn",
            "card_number",
            "date",
            "address",
        ];
        let generated = (
            proptest::collection::vec("[a-z_]{1,10}", 0..4),
            proptest::collection::btree_map(
                "[a-z_]{1,10}",
                proptest::collection::vec(("[a-z_]{1,10}", 0..types.len()), 0..5),
                0..3,
            ),
        )
            .prop_map(move |(purposes, collections)| {
                let mut text = format!("purposes = {purposes:?}\n");
                for (name, fields) in collections {
                    text.push_str(&format!("[collections.{name}]\nfields = [\n"));
                    for (field, ty) in fields {
                        text.push_str(&format!(
                            "  {{ name = {field:?}, type = {:?} }},\n",
                            types[ty]
                        ));
                    }
                    text.push_str("]\n");
                }
                text.into_bytes()
            });
        let valid = prop_oneof![Just(shipped.as_bytes().to_vec()), generated];
        let dict = &[
            "=",
            "\"",
            "'",
            "'''",
            "[",
            "]",
            "[[",
            "{",
            "}",
            ",",
            "\n",
            "#",
            "\\u",
            "type",
            "name",
            "fields",
            "purposes",
            "[collections.",
            "collections",
            "string",
            "email",
            ".",
        ];
        crate::testing::fuzz(
            "schema TOML",
            256,
            crate::testing::inputs(valid, dict),
            |input| {
                if let Ok(schema) = Schema::parse(&input.text()) {
                    // What is accepted holds what the vault relies on.
                    prop_assert!(!schema.purposes().is_empty());
                    prop_assert!(schema.collections().count() > 0);
                    for c in schema.collections() {
                        prop_assert!(!c.fields().is_empty());
                        prop_assert!(c.fields().len() <= MAX_FIELDS_PER_COLLECTION);
                    }
                }
                Ok(())
            },
        );
    }
}
