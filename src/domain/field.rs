//! Field names, field types, and field values: validation, normalization and masking by type.

use std::fmt;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::{InvalidInput, is_identifier};

/// A field name as declared in a collection schema: a lowercase identifier.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldName(String);

impl FieldName {
    /// Parses a field name (syntax only; the schema says whether the field exists).
    ///
    /// # Errors
    /// `InvalidInput` unless `s` is a lowercase identifier of at most 64 characters.
    pub fn parse(s: &str, field: &str) -> Result<Self, InvalidInput> {
        Self::check(s, field)?;
        Ok(Self(s.to_owned()))
    }

    /// Checks the syntax of a field name without keeping it (nothing is allocated for a
    /// valid name).
    ///
    /// # Errors
    /// As `parse`.
    pub fn check(s: &str, field: &str) -> Result<(), InvalidInput> {
        if s.is_empty() {
            return Err(InvalidInput::new(field, "field name is required"));
        }
        if is_identifier(s) {
            Ok(())
        } else {
            Err(InvalidInput::new(
                field,
                "field name must be a lowercase identifier ([a-z][a-z0-9_]*, at most 64)",
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The declared type of a field: decides validation, normalization and the mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A postal address, free text on one or more lines.
    Address,
    /// A payment card number (12-19 digits, Luhn-checked), stored as digits only.
    CardNumber,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An email address, stored with its domain lowercased.
    Email,
    /// A person's name.
    Name,
    /// A phone number, stored in E.164 form (`+14155550123`).
    Phone,
    /// A US social security number, stored as `123-45-6789`.
    Ssn,
    /// Free text.
    String,
}

impl FieldType {
    /// Whether values of this type have a defined normalization for a blind index (`indexed =
    /// true` in the schema): email, phone and ssn.
    pub fn is_indexable(self) -> bool {
        matches!(self, Self::Email | Self::Phone | Self::Ssn)
    }
}

/// A field value in plaintext. Zeroized on drop; its `Debug` prints no characters of it.
pub struct FieldValue(Zeroizing<String>);

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FieldValue(<redacted>)")
    }
}

impl FieldValue {
    /// Validates `raw` against `ty` and returns its normalized form.
    ///
    /// `field` names the input in errors; errors never quote the value.
    ///
    /// # Errors
    /// `InvalidInput` if the value is empty, longer than `max_bytes`, holds control characters,
    /// or does not fit its type.
    pub fn parse(
        raw: &str,
        ty: FieldType,
        max_bytes: usize,
        field: &str,
    ) -> Result<Self, InvalidInput> {
        let err = |problem: &str| InvalidInput::new(field, problem);
        if raw.trim().is_empty() {
            return Err(err("value must not be empty"));
        }
        if raw.len() > max_bytes {
            return Err(err(&format!(
                "value is {} bytes, more than the limit of {max_bytes}",
                raw.len()
            )));
        }
        let allows_newlines = matches!(ty, FieldType::Address | FieldType::String);
        if raw
            .chars()
            .any(|c| c.is_control() && !(allows_newlines && (c == '\n' || c == '\t')))
        {
            return Err(err("value must not contain control characters"));
        }
        let normalized = match ty {
            FieldType::Address | FieldType::String => raw.trim().to_owned(),
            FieldType::CardNumber => normalize_card(raw).ok_or_else(|| {
                err("not a valid card number: 12-19 digits (spaces or dashes allowed) passing the Luhn check")
            })?,
            FieldType::Date => normalize_date(raw)
                .ok_or_else(|| err("not a valid date: expected YYYY-MM-DD"))?,
            FieldType::Email => normalize_email(raw).ok_or_else(|| {
                err("not a valid email address: expected local@domain.tld")
            })?,
            FieldType::Name => normalize_name(raw).ok_or_else(|| {
                err("not a valid name: letters, spaces, and . ' - only, at most 200 characters")
            })?,
            FieldType::Phone => normalize_phone(raw).ok_or_else(|| {
                err("not a valid phone number: expected +<country><number> (E.164, 8-15 digits) or a 10-digit US number")
            })?,
            FieldType::Ssn => normalize_ssn(raw).ok_or_else(|| {
                err("not a valid SSN: expected 123-45-6789 (no 000/666/9xx area, 00 group, or 0000 serial)")
            })?,
        };
        Ok(Self(Zeroizing::new(normalized)))
    }

    /// Wraps a value read back from the vault (already validated when written).
    pub fn from_stored(value: Zeroizing<String>) -> Self {
        Self(value)
    }

    /// The plaintext. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The form a blind index digests, for a value of type `ty` as `parse` normalized it:
    /// an email lowercased whole (its stored form lowercases the domain only), a phone in
    /// E.164 (as stored), an SSN's nine digits. Equivalent spellings give the same form.
    /// `None` for a type without an index normalization.
    pub fn index_form(&self, ty: FieldType) -> Option<Zeroizing<String>> {
        let v = self.0.as_str();
        match ty {
            FieldType::Email => Some(Zeroizing::new(v.to_lowercase())),
            FieldType::Phone => Some(Zeroizing::new(v.to_owned())),
            FieldType::Ssn => Some(Zeroizing::new(
                v.chars().filter(char::is_ascii_digit).collect(),
            )),
            FieldType::Address
            | FieldType::CardNumber
            | FieldType::Date
            | FieldType::Name
            | FieldType::String => None,
        }
    }

    /// The masked form of this value for its type: enough to recognize, not enough to use.
    pub fn mask(&self, ty: FieldType) -> String {
        let v = self.0.as_str();
        match ty {
            FieldType::Address => v
                .rsplit(',')
                .next()
                .filter(|_| v.contains(','))
                .map_or_else(|| "***".to_owned(), |last| format!("***, {}", last.trim())),
            FieldType::CardNumber => format!("**** **** **** {}", last_chars(v, 4)),
            FieldType::Date => v
                .get(..4)
                .map_or_else(|| "****-**-**".to_owned(), |y| format!("{y}-**-**")),
            FieldType::Email => match v.split_once('@') {
                Some((local, domain)) => {
                    let first = local.chars().next().map(String::from).unwrap_or_default();
                    format!("{first}***@{domain}")
                }
                None => "***".to_owned(),
            },
            FieldType::Name => v
                .split_whitespace()
                .map(|word| {
                    let first = word.chars().next().map(String::from).unwrap_or_default();
                    format!("{first}***")
                })
                .collect::<Vec<_>>()
                .join(" "),
            FieldType::Phone => {
                let digits = v.trim_start_matches('+');
                let shown = last_chars(digits, 4);
                let hidden = digits.chars().count().saturating_sub(4);
                format!("+{}{shown}", "*".repeat(hidden))
            }
            FieldType::Ssn => format!("***-**-{}", last_chars(v, 4)),
            // Free text has no safe part to show, and its length is not shown either.
            FieldType::String => "********".to_owned(),
        }
    }
}

/// The last `n` characters of `s`.
fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

fn normalize_card(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10).then_some(digits)
}

fn normalize_date(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let b = raw.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = raw.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (year >= 1 && (1..=days).contains(&day)).then(|| raw.to_owned())
}

fn normalize_email(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.len() > 254 || raw.chars().any(char::is_whitespace) {
        return None;
    }
    let (local, domain) = raw.split_once('@')?;
    let labels_ok = domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    (labels_ok && local_ok).then(|| format!("{local}@{}", domain.to_lowercase()))
}

fn normalize_name(raw: &str) -> Option<String> {
    let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let ok = collapsed.chars().count() <= 200
        && collapsed.chars().any(char::is_alphabetic)
        && collapsed
            .chars()
            .all(|c| c.is_alphabetic() || matches!(c, ' ' | '.' | '\'' | '-'));
    ok.then_some(collapsed)
}

fn normalize_phone(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let international = raw.starts_with('+');
    let rest = raw.strip_prefix('+').unwrap_or(raw);
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '.'))
    {
        return None;
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    let e164 = if international {
        digits
    } else if digits.len() == 10 {
        format!("1{digits}")
    } else {
        return None;
    };
    ((8..=15).contains(&e164.len()) && !e164.starts_with('0')).then(|| format!("+{e164}"))
}

fn normalize_ssn(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let digits: String = match raw.len() {
        9 => raw.to_owned(),
        11 if raw.as_bytes()[3] == b'-' && raw.as_bytes()[6] == b'-' => raw.replace('-', ""),
        _ => return None,
    };
    if digits.len() != 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (area, group, serial) = (&digits[0..3], &digits[3..5], &digits[5..9]);
    let valid = area != "000"
        && area != "666"
        && !area.starts_with('9')
        && group != "00"
        && serial != "0000";
    valid.then(|| format!("{area}-{group}-{serial}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, ty: FieldType) -> Option<String> {
        FieldValue::parse(raw, ty, 4096, "f")
            .ok()
            .map(|v| v.expose().to_owned())
    }

    fn masked(raw: &str, ty: FieldType) -> String {
        FieldValue::parse(raw, ty, 4096, "f")
            .map(|v| v.mask(ty))
            .unwrap_or_default()
    }

    #[test]
    fn validates_and_normalizes_by_type() {
        assert_eq!(
            parse("Ada@Example.COM", FieldType::Email).as_deref(),
            Some("Ada@example.com")
        );
        assert_eq!(parse("no-at-sign", FieldType::Email), None);
        assert_eq!(parse("a@b", FieldType::Email), None);
        assert_eq!(
            parse("(415) 555-0123", FieldType::Phone).as_deref(),
            Some("+14155550123")
        );
        assert_eq!(
            parse("+44 20 7946 0958", FieldType::Phone).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(parse("555-0123", FieldType::Phone), None);
        assert_eq!(
            parse("123456789", FieldType::Ssn).as_deref(),
            Some("123-45-6789")
        );
        assert_eq!(parse("666-45-6789", FieldType::Ssn), None);
        assert_eq!(parse("123-00-6789", FieldType::Ssn), None);
        assert_eq!(
            parse("4242 4242 4242 4242", FieldType::CardNumber).as_deref(),
            Some("4242424242424242")
        );
        assert_eq!(parse("4242 4242 4242 4241", FieldType::CardNumber), None);
        assert_eq!(
            parse("2024-02-29", FieldType::Date).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(parse("2023-02-29", FieldType::Date), None);
        assert_eq!(parse("2023-13-01", FieldType::Date), None);
        assert_eq!(
            parse("  Ada   Lovelace ", FieldType::Name).as_deref(),
            Some("Ada Lovelace")
        );
        assert_eq!(parse("R2D2", FieldType::Name), None);
        assert_eq!(parse("", FieldType::String), None);
        assert_eq!(parse("a\u{0}b", FieldType::String), None);
        assert!(FieldValue::parse(&"x".repeat(10), FieldType::String, 9, "f").is_err());
    }

    #[test]
    fn masks_by_type() {
        assert_eq!(
            masked("ada@example.com", FieldType::Email),
            "a***@example.com"
        );
        assert_eq!(masked("123-45-6789", FieldType::Ssn), "***-**-6789");
        assert_eq!(
            masked("4242424242424242", FieldType::CardNumber),
            "**** **** **** 4242"
        );
        assert_eq!(masked("+14155550123", FieldType::Phone), "+*******0123");
        assert_eq!(masked("Ada Lovelace", FieldType::Name), "A*** L***");
        assert_eq!(masked("1815-12-10", FieldType::Date), "1815-**-**");
        assert_eq!(
            masked("12 St James's Square, London", FieldType::Address),
            "***, London"
        );
        assert_eq!(masked("secret notes", FieldType::String), "********");
    }

    #[test]
    fn debug_prints_no_value() {
        let v = FieldValue::parse("123-45-6789", FieldType::Ssn, 100, "f").ok();
        assert!(!format!("{v:?}").contains("6789"));
    }
}
