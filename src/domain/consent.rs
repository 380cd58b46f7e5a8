//! Consent rules (`[consent]` in `policies/schema.toml`): the channels a customer gives consent
//! for, the opt-out flags, and what each purpose needs of a record before its fields may be used
//! for it; and the values a consent change carries (its source, its evidence hash), valid by
//! construction.
//!
//! No I/O here, and nothing of how the ledger is stored (that is `vault::consent`).

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;

use super::{Collection, InvalidInput, Purpose, is_identifier};

/// The longest consent source, in characters.
pub const MAX_SOURCE_CHARS: usize = 128;

/// The longest opt-out reason or law name in the schema, in characters.
const MAX_REASON_CHARS: usize = 200;

/// `[consent]` as written in the schema file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsentFile {
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    opt_outs: BTreeMap<String, OptOutFile>,
    #[serde(default)]
    purposes: BTreeMap<String, PurposeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptOutFile {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeFile {
    #[serde(default)]
    needs: Vec<NeedFile>,
    #[serde(default)]
    denied_by: Vec<DenialFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NeedFile {
    channel: String,
    fields: Option<Vec<String>>,
    law: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenialFile {
    opt_out: String,
    fields: Option<Vec<String>>,
}

/// The fields a rule covers: every field, or the named ones (declared in some collection).
#[derive(Debug, Clone)]
enum Scope {
    All,
    Named(Vec<String>),
}

impl Scope {
    /// The bits of `collection`'s fields the scope covers.
    fn mask(&self, collection: &Collection) -> u64 {
        match self {
            Self::All => (0..collection.fields().len()).fold(0, |m, i| m | (1 << i)),
            Self::Named(names) => names
                .iter()
                .filter_map(|n| collection.field_index(n))
                .fold(0, |m, i| m | (1 << i)),
        }
    }
}

/// A purpose's need: consent for `channel` (given for that purpose) before the fields in scope
/// may be used for it.
#[derive(Debug, Clone)]
pub struct Need {
    channel: String,
    scope: Scope,
    reason: String,
}

impl Need {
    /// The channel whose consent the purpose needs.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Why a field is withheld without it: `no autodialer consent (TCPA)`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A purpose's denial: the fields in scope may not be used for it while `opt_out` is set.
#[derive(Debug, Clone)]
pub struct Denial {
    opt_out: String,
    scope: Scope,
    reason: String,
}

impl Denial {
    /// The opt-out flag that denies.
    pub fn opt_out(&self) -> &str {
        &self.opt_out
    }

    /// Why a field is withheld while it is set: the opt-out's declared reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// What one purpose needs of a record: denials (checked first) and needs.
#[derive(Debug, Clone, Default)]
pub struct PurposeRules {
    needs: Vec<Need>,
    denied_by: Vec<Denial>,
}

impl PurposeRules {
    /// The bits of `collection`'s fields some rule covers: no consent check touches the others.
    pub fn mask(&self, collection: &Collection) -> u64 {
        self.needs
            .iter()
            .map(|n| n.scope.mask(collection))
            .chain(self.denied_by.iter().map(|d| d.scope.mask(collection)))
            .fold(0, |m, b| m | b)
    }

    /// Why field `field` of `collection` may not be used now, given whether a channel's consent
    /// is granted for this purpose and whether an opt-out is set: the first denial that holds
    /// (an opt-out outranks any consent), else the first need not met; `None` if it may be used.
    pub fn withheld<'r>(
        &'r self,
        collection: &Collection,
        field: usize,
        granted: impl Fn(&str) -> bool,
        opted_out: impl Fn(&str) -> bool,
    ) -> Option<&'r str> {
        let bit = 1u64.checked_shl(u32::try_from(field).ok()?)?;
        let denial = self
            .denied_by
            .iter()
            .find(|d| d.scope.mask(collection) & bit != 0 && opted_out(&d.opt_out))
            .map(Denial::reason);
        denial.or_else(|| {
            self.needs
                .iter()
                .find(|n| n.scope.mask(collection) & bit != 0 && !granted(&n.channel))
                .map(Need::reason)
        })
    }

    /// The needs, in declaration order.
    pub fn needs(&self) -> &[Need] {
        &self.needs
    }

    /// The denials, in declaration order.
    pub fn denied_by(&self) -> &[Denial] {
        &self.denied_by
    }
}

/// A declared opt-out flag and why it withholds.
#[derive(Debug, Clone)]
pub struct OptOut {
    name: String,
    reason: String,
}

impl OptOut {
    /// The flag's name, e.g. `do_not_call`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why a field is withheld while it is set.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// The consent rules of a schema: channels, opt-outs, and a rule set per purpose (indexed like
/// `Schema::purposes`; `None` for a purpose without rules, whose reads do no consent work).
#[derive(Debug, Clone, Default)]
pub struct ConsentRules {
    channels: Vec<String>,
    opt_outs: Vec<OptOut>,
    by_purpose: Vec<Option<PurposeRules>>,
}

impl ConsentRules {
    /// Parses `[consent]` against the declared purposes and collections.
    pub(super) fn parse(
        file: ConsentFile,
        purposes: &[Purpose],
        collections: &BTreeMap<String, Collection>,
    ) -> Result<Self, InvalidInput> {
        let ConsentFile {
            channels: channel_names,
            opt_outs: opt_out_files,
            purposes: purpose_files,
        } = file;
        let mut channels: Vec<String> = Vec::new();
        for c in channel_names {
            if !is_identifier(&c) {
                return Err(InvalidInput::new(
                    "schema.toml: consent.channels",
                    format!("{c:?} is not a lowercase identifier"),
                ));
            }
            if channels.contains(&c) {
                return Err(InvalidInput::new(
                    "schema.toml: consent.channels",
                    format!("{c:?} is declared twice"),
                ));
            }
            channels.push(c);
        }
        let mut opt_outs = Vec::new();
        for (name, o) in opt_out_files {
            let at = format!("schema.toml: consent.opt_outs.{name}");
            if !is_identifier(&name) {
                return Err(InvalidInput::new(
                    at,
                    "an opt-out name must be a lowercase identifier",
                ));
            }
            check_text(&o.reason, &format!("{at}.reason"))?;
            opt_outs.push(OptOut {
                name,
                reason: o.reason,
            });
        }
        let mut by_purpose: Vec<Option<PurposeRules>> = vec![None; purposes.len()];
        for (name, p) in purpose_files {
            let at = format!("schema.toml: consent.purposes.{name}");
            let Some(index) = purposes.iter().position(|q| q.as_str() == name) else {
                return Err(InvalidInput::new(
                    at,
                    "not a declared purpose (add it to `purposes`)",
                ));
            };
            let mut rules = PurposeRules::default();
            for (i, need) in p.needs.into_iter().enumerate() {
                let at = format!("{at}.needs[{i}]");
                if !channels.contains(&need.channel) {
                    return Err(InvalidInput::new(
                        format!("{at}.channel"),
                        format!(
                            "{:?} is not a declared channel; declared: {}",
                            need.channel,
                            channels.join(", ")
                        ),
                    ));
                }
                let reason = match need.law {
                    Some(law) => {
                        check_text(&law, &format!("{at}.law"))?;
                        format!("no {} consent ({law})", need.channel)
                    }
                    None => format!("no {} consent", need.channel),
                };
                rules.needs.push(Need {
                    scope: scope(need.fields, collections, &at)?,
                    channel: need.channel,
                    reason,
                });
            }
            for (i, denial) in p.denied_by.into_iter().enumerate() {
                let at = format!("{at}.denied_by[{i}]");
                let Some(opt_out) = opt_outs.iter().find(|o| o.name == denial.opt_out) else {
                    let declared: Vec<&str> = opt_outs.iter().map(OptOut::name).collect();
                    return Err(InvalidInput::new(
                        format!("{at}.opt_out"),
                        format!(
                            "{:?} is not a declared opt-out; declared: {}",
                            denial.opt_out,
                            declared.join(", ")
                        ),
                    ));
                };
                rules.denied_by.push(Denial {
                    scope: scope(denial.fields, collections, &at)?,
                    reason: opt_out.reason.clone(),
                    opt_out: denial.opt_out,
                });
            }
            if !rules.needs.is_empty() || !rules.denied_by.is_empty() {
                by_purpose[index] = Some(rules);
            }
        }
        Ok(Self {
            channels,
            opt_outs,
            by_purpose,
        })
    }

    /// The declared channels.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The declared opt-outs, by name.
    pub fn opt_outs(&self) -> &[OptOut] {
        &self.opt_outs
    }

    /// The rules of the purpose at `index` (as `Schema::purpose_index` gives it); `None` when
    /// the purpose has none.
    pub fn rules(&self, index: usize) -> Option<&PurposeRules> {
        self.by_purpose.get(index).and_then(Option::as_ref)
    }

    /// Whether any purpose has rules.
    pub fn any(&self) -> bool {
        self.by_purpose.iter().any(Option::is_some)
    }

    /// Parses a channel name that must be declared.
    ///
    /// # Errors
    /// `InvalidInput` naming `input` (never repeating the name given) if it is missing or not
    /// declared.
    pub fn channel(&self, name: &str, input: &str) -> Result<String, InvalidInput> {
        if name.is_empty() {
            return Err(InvalidInput::new(input, "a declared channel is required"));
        }
        if self.channels.iter().any(|c| c == name) {
            return Ok(name.to_owned());
        }
        Err(InvalidInput::new(
            input,
            format!("unknown channel; declared: {}", self.channels.join(", ")),
        ))
    }

    /// Parses an opt-out name that must be declared.
    ///
    /// # Errors
    /// `InvalidInput` naming `input` (never repeating the name given) if it is missing or not
    /// declared.
    pub fn opt_out(&self, name: &str, input: &str) -> Result<&OptOut, InvalidInput> {
        if name.is_empty() {
            return Err(InvalidInput::new(input, "a declared opt-out is required"));
        }
        self.opt_outs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| {
                let declared: Vec<&str> = self.opt_outs.iter().map(OptOut::name).collect();
                InvalidInput::new(
                    input,
                    format!("unknown opt-out; declared: {}", declared.join(", ")),
                )
            })
    }
}

/// Checks a reason or law text of the schema: printable, 1 to 200 characters.
fn check_text(text: &str, at: &str) -> Result<(), InvalidInput> {
    let n = text.chars().count();
    if n == 0 || n > MAX_REASON_CHARS || text.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            at,
            format!("must be 1 to {MAX_REASON_CHARS} printable characters"),
        ));
    }
    Ok(())
}

/// A rule's fields: every field if not given, else names each declared in some collection.
fn scope(
    fields: Option<Vec<String>>,
    collections: &BTreeMap<String, Collection>,
    at: &str,
) -> Result<Scope, InvalidInput> {
    let Some(names) = fields else {
        return Ok(Scope::All);
    };
    if names.is_empty() {
        return Err(InvalidInput::new(
            format!("{at}.fields"),
            "name at least one field, or leave `fields` out for every field",
        ));
    }
    for name in &names {
        if !collections.values().any(|c| c.field_index(name).is_some()) {
            return Err(InvalidInput::new(
                format!("{at}.fields"),
                format!("{name:?} is not a field of any declared collection"),
            ));
        }
    }
    Ok(Scope::Named(names))
}

/// Where a consent change came from: a web form id, a call recording id, an agent
/// (`webform:8812`, `call:rec-4411`, `agent:jdoe`). Kept in the ledger, never in an error, a
/// log line or an audit event (it may name a person), so its `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsentSource(String);

impl ConsentSource {
    /// Parses a source: required, printable, at most 128 characters.
    ///
    /// # Errors
    /// `InvalidInput` naming `input`, never repeating the text.
    pub fn parse(text: &str, input: &str) -> Result<Self, InvalidInput> {
        if text.trim().is_empty() {
            return Err(InvalidInput::new(
                input,
                "required: where the consent or opt-out came from, e.g. webform:8812, \
                 call:rec-4411 or agent:jdoe",
            ));
        }
        if text.chars().count() > MAX_SOURCE_CHARS || text.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                input,
                format!("must be at most {MAX_SOURCE_CHARS} printable characters"),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The source as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConsentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConsentSource(<{} chars>)", self.0.chars().count())
    }
}

/// The SHA-256 of the evidence of a consent change (a signed form, a call recording), as 64
/// lowercase hex digits: the evidence itself stays with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceHash(String);

impl EvidenceHash {
    /// Parses 64 hex digits (either case; kept lowercase).
    ///
    /// # Errors
    /// `InvalidInput` naming `input`, never repeating the text.
    pub fn parse(text: &str, input: &str) -> Result<Self, InvalidInput> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidInput::new(
                input,
                "must be a SHA-256 as 64 hex digits",
            ));
        }
        Ok(Self(text.to_ascii_lowercase()))
    }

    /// The hash as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::Schema;

    const BASE: &str = r#"
purposes = ["support", "telemarketing", "sale"]
[collections.customers]
fields = [
  { name = "name", type = "name" },
  { name = "phone", type = "phone" },
]
"#;

    fn parse_err(consent: &str) -> String {
        Schema::parse(&format!("{BASE}{consent}"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn the_shipped_schema_declares_the_tcpa_and_ccpa_rules() {
        let schema = Schema::parse(include_str!("../../policies/schema.toml")).unwrap();
        let consent = schema.consent();
        assert_eq!(
            consent.channels(),
            ["autodialer", "call", "email", "prerecorded", "sms"]
        );
        let customers = schema.collection("customers", "c").unwrap();
        let phone = customers.field_index("phone").unwrap();
        let name = customers.field_index("name").unwrap();
        let telemarketing = consent
            .rules(schema.purpose_index("telemarketing").unwrap())
            .unwrap();
        assert_eq!(telemarketing.mask(customers), 1 << phone);
        let nothing = |_: &str| false;
        let everything = |_: &str| true;
        assert_eq!(
            telemarketing.withheld(customers, phone, nothing, nothing),
            Some("no autodialer consent (TCPA)")
        );
        assert_eq!(
            telemarketing.withheld(customers, phone, everything, nothing),
            None
        );
        assert_eq!(
            telemarketing.withheld(customers, phone, everything, |o| o == "do_not_call"),
            Some("customer is on the do-not-call list (TCPA)")
        );
        assert_eq!(
            telemarketing.withheld(customers, name, nothing, everything),
            None
        );
        for purpose in ["sale", "share"] {
            let rules = consent
                .rules(schema.purpose_index(purpose).unwrap())
                .unwrap();
            assert_eq!(rules.mask(customers), (1 << customers.fields().len()) - 1);
            assert_eq!(
                rules.withheld(customers, name, nothing, |o| o == "do_not_sell_or_share"),
                Some("customer opted out of sale/share (CCPA)")
            );
        }
        assert!(
            consent
                .rules(schema.purpose_index("support").unwrap())
                .is_none()
        );
    }

    #[test]
    fn a_schema_without_consent_has_no_rules() {
        let schema = Schema::parse(BASE).unwrap();
        assert!(!schema.consent().any());
        assert!(schema.consent().channels().is_empty());
    }

    #[test]
    fn undeclared_names_are_refused_naming_the_key() {
        let channels = "[consent]\nchannels = [\"sms\"]\n";
        for (consent, key, problem) in [
            (
                format!(
                    "{channels}[consent.purposes.telemarketing]\nneeds = [{{ channel = \"fax\" }}]\n"
                ),
                "consent.purposes.telemarketing.needs[0].channel",
                "not a declared channel",
            ),
            (
                format!("{channels}[consent.purposes.nope]\nneeds = [{{ channel = \"sms\" }}]\n"),
                "consent.purposes.nope",
                "not a declared purpose",
            ),
            (
                format!("{channels}[consent.purposes.sale]\ndenied_by = [{{ opt_out = \"x\" }}]\n"),
                "consent.purposes.sale.denied_by[0].opt_out",
                "not a declared opt-out",
            ),
            (
                format!(
                    "{channels}[consent.purposes.sale]\nneeds = [{{ channel = \"sms\", fields = [\"ssn\"] }}]\n"
                ),
                "consent.purposes.sale.needs[0].fields",
                "not a field of any declared collection",
            ),
            (
                format!(
                    "{channels}[consent.purposes.sale]\nneeds = [{{ channel = \"sms\", fields = [] }}]\n"
                ),
                "consent.purposes.sale.needs[0].fields",
                "at least one field",
            ),
            (
                "[consent]\nchannels = [\"sms\", \"sms\"]\n".to_owned(),
                "consent.channels",
                "declared twice",
            ),
            (
                "[consent]\nchannels = [\"SMS\"]\n".to_owned(),
                "consent.channels",
                "lowercase identifier",
            ),
            (
                "[consent.opt_outs.do_not_call]\nreason = \"\"\n".to_owned(),
                "consent.opt_outs.do_not_call.reason",
                "printable characters",
            ),
            (
                "[consent.opt_outs.do_not_call]\nwhy = \"x\"\n".to_owned(),
                "schema.toml",
                "unknown field",
            ),
        ] {
            let err = parse_err(&consent);
            assert!(
                err.contains(key) && err.contains(problem),
                "{consent}: {err}"
            );
        }
    }

    #[test]
    fn a_need_without_a_law_says_only_the_channel() {
        let schema = Schema::parse(&format!(
            "{BASE}[consent]\nchannels = [\"sms\"]\n[consent.purposes.support]\nneeds = [{{ channel = \"sms\" }}]\n"
        ))
        .unwrap();
        let customers = schema.collection("customers", "c").unwrap();
        let rules = schema.consent().rules(0).unwrap();
        assert_eq!(
            rules.withheld(customers, 0, |_| false, |_| false),
            Some("no sms consent")
        );
        assert_eq!(rules.mask(customers), 0b11);
    }

    #[test]
    fn sources_and_evidence_hashes_are_checked_without_echo() {
        use super::{ConsentSource, EvidenceHash};
        assert!(ConsentSource::parse("webform:8812", "source").is_ok());
        for bad in ["", "   ", "a\nb", &"x".repeat(129)] {
            let err = ConsentSource::parse(bad, "source").unwrap_err();
            assert_eq!(err.field, "source");
            assert!(bad.trim().is_empty() || !err.problem.contains(bad));
        }
        let hash = "AB".repeat(32);
        assert_eq!(
            EvidenceHash::parse(&hash, "h").unwrap().as_str(),
            "ab".repeat(32)
        );
        let err = EvidenceHash::parse("123-45-6789", "evidence_sha256").unwrap_err();
        assert!(!err.problem.contains("123-45-6789"));
        assert!(EvidenceHash::parse(&"g".repeat(64), "h").is_err());
        assert_eq!(
            format!("{:?}", ConsentSource::parse("agent:jdoe", "s").unwrap()),
            "ConsentSource(<10 chars>)"
        );
    }
}
