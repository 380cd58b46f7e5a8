//! Retention rules declared in `policies/schema.toml` (GDPR art. 5(1)(e), storage limitation):
//! how long a whole record, or one of its fields, is kept after a moment of its life.
//!
//! ```toml
//! [collections.customers.retention]
//! record = { keep = "7 years", after = "last_activity" }
//! fields = { card_number = { keep = "18 months", after = "last_update" } }
//! ```
//!
//! Spans are calendar spans (`7 years`, `18 months`, `30 days`, `P7Y`), parsed by jiff and added
//! to a time in UTC by jiff: no month arithmetic by hand. No I/O here.

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;

use super::InvalidInput;

/// The longest span a rule may keep data for: a longer one is a typo, not a policy.
const MAX_YEARS: i16 = 100;

/// The moment of a record's life a rule counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The record's creation.
    Created,
    /// The record's last create or update (a read is not activity).
    LastActivity,
    /// The field's own last write (fields only).
    LastUpdate,
}

impl Anchor {
    /// The name as written in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::LastActivity => "last_activity",
            Self::LastUpdate => "last_update",
        }
    }
}

/// One rule: keep for `keep` after `after`.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    keep: jiff::Span,
    /// The span as written (trimmed), for people: `18 months`.
    text: String,
    after: Anchor,
}

impl RetentionRule {
    /// What the rule counts from.
    pub fn after(&self) -> Anchor {
        self.after
    }

    /// The span as written in the schema.
    pub fn keep_text(&self) -> &str {
        &self.text
    }

    /// When data whose anchor time is `anchor_ms` expires: the span added to that time in UTC
    /// (ms since the epoch); `i64::MAX` if that lies past what jiff can represent.
    pub fn due_ms(&self, anchor_ms: i64) -> i64 {
        jiff::Timestamp::from_millisecond(anchor_ms)
            .ok()
            .and_then(|t| {
                t.to_zoned(jiff::tz::TimeZone::UTC)
                    .checked_add(self.keep)
                    .ok()
            })
            .map_or(i64::MAX, |z| z.timestamp().as_millisecond())
    }
}

impl fmt::Display for RetentionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} after {}", self.text, self.after.as_str())
    }
}

/// A collection's retention: a rule for the whole record and rules per field (by field index).
#[derive(Debug, Clone, Default)]
pub struct Retention {
    record: Option<RetentionRule>,
    fields: Vec<(usize, RetentionRule)>,
}

impl Retention {
    /// The rule of the whole record, if any.
    pub fn record(&self) -> Option<&RetentionRule> {
        self.record.as_ref()
    }

    /// The field rules, by field index, in declaration order.
    pub fn fields(&self) -> &[(usize, RetentionRule)] {
        &self.fields
    }

    /// Whether the collection declares no rule at all.
    pub fn is_empty(&self) -> bool {
        self.record.is_none() && self.fields.is_empty()
    }
}

/// `[collections.NAME.retention]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionFile {
    record: Option<RuleFile>,
    #[serde(default)]
    fields: BTreeMap<String, RuleFile>,
}

/// One rule, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    keep: String,
    after: String,
}

/// Checks a collection's retention table; `field_index` resolves declared field names. Errors
/// name the key (`schema.toml: collections.customers.retention.fields.card_number.keep`).
pub(super) fn parse(
    file: RetentionFile,
    at: &str,
    field_index: impl Fn(&str) -> Option<usize>,
) -> Result<Retention, InvalidInput> {
    let at = format!("{at}.retention");
    let record = file
        .record
        .map(|r| rule(r, &format!("{at}.record"), false))
        .transpose()?;
    let mut fields = Vec::new();
    for (name, r) in file.fields {
        let key = format!("{at}.fields.{name}");
        let Some(i) = field_index(&name) else {
            return Err(InvalidInput::new(
                key,
                "not a declared field of this collection",
            ));
        };
        fields.push((i, rule(r, &key, true)?));
    }
    fields.sort_by_key(|(i, _)| *i);
    Ok(Retention { record, fields })
}

fn rule(file: RuleFile, at: &str, field: bool) -> Result<RetentionRule, InvalidInput> {
    let RuleFile { keep, after } = file;
    let after = match after.as_str() {
        "created" => Anchor::Created,
        "last_activity" => Anchor::LastActivity,
        "last_update" if field => Anchor::LastUpdate,
        "last_update" => {
            return Err(InvalidInput::new(
                format!("{at}.after"),
                "last_update is a field's own last write; a whole record counts from created \
                 or last_activity (its last create or update)",
            ));
        }
        _ => {
            return Err(InvalidInput::new(
                format!("{at}.after"),
                if field {
                    "must be created, last_update or last_activity"
                } else {
                    "must be created or last_activity"
                },
            ));
        }
    };
    let key = format!("{at}.keep");
    let text = keep.trim().to_owned();
    let span: jiff::Span = text.parse().map_err(|_| {
        InvalidInput::new(
            &key,
            "must be a span such as \"7 years\", \"18 months\", \"30 days\" or \"P7Y\"",
        )
    })?;
    if !span.is_positive() {
        return Err(InvalidInput::new(key, "must be longer than zero"));
    }
    let reference = jiff::civil::date(2000, 1, 1);
    let longest = jiff::Span::new().years(MAX_YEARS);
    match span.compare((longest, reference)) {
        Ok(std::cmp::Ordering::Less | std::cmp::Ordering::Equal) => {}
        Ok(std::cmp::Ordering::Greater) | Err(_) => {
            return Err(InvalidInput::new(
                key,
                format!("must be at most {MAX_YEARS} years"),
            ));
        }
    }
    Ok(RetentionRule {
        keep: span,
        text,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(keep: &str, after: &str, field: bool) -> Result<RetentionRule, InvalidInput> {
        rule(
            RuleFile {
                keep: keep.into(),
                after: after.into(),
            },
            "schema.toml: collections.c.retention.record",
            field,
        )
    }

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn calendar_spans_are_added_in_utc() {
        let r = one("18 months", "last_update", true).unwrap();
        assert_eq!(r.to_string(), "18 months after last_update");
        // A month is a calendar month: Aug 31 + 18 months = Feb 28/29, clamped by jiff.
        assert_eq!(
            r.due_ms(ms("2024-08-31T10:00:00Z")),
            ms("2026-02-28T10:00:00Z")
        );
        let r = one("7y", "last_activity", false).unwrap();
        assert_eq!(
            r.due_ms(ms("2020-02-29T00:00:00.001Z")),
            ms("2027-02-28T00:00:00.001Z")
        );
        assert_eq!(
            one("P30D", "created", false)
                .unwrap()
                .due_ms(ms("2024-03-01T00:00:00Z")),
            ms("2024-03-31T00:00:00Z")
        );
        assert_eq!(
            one("1 year", "created", false).unwrap().due_ms(i64::MAX),
            i64::MAX
        );
    }

    #[test]
    fn bad_rules_are_refused_naming_the_key() {
        let cases = [
            ("0 days", "created", true, ".keep", "longer than zero"),
            ("-1 year", "created", true, ".keep", "longer than zero"),
            ("101 years", "created", true, ".keep", "at most 100 years"),
            ("1300 months", "created", true, ".keep", "at most 100 years"),
            ("soon", "created", true, ".keep", "a span such as"),
            (
                "1 year",
                "yesterday",
                true,
                ".after",
                "created, last_update or",
            ),
            (
                "1 year",
                "last_update",
                false,
                ".after",
                "a field's own last write",
            ),
        ];
        for (keep, after, field, key, problem) in cases {
            let e = one(keep, after, field)
                .err()
                .unwrap_or_else(|| panic!("{keep} {after}"));
            assert!(e.field.ends_with(key), "{keep}: {}", e.field);
            assert!(
                e.field.starts_with("schema.toml: collections.c"),
                "{}",
                e.field
            );
            assert!(e.problem.contains(problem), "{keep}: {}", e.problem);
        }
        assert!(one("100 years", "created", true).is_ok());
    }
}
