//! Certificates for TLS and mTLS: the identity a client certificate carries (a SAN URI, mapped
//! to a subject), checks of PEM files before a listener uses them, and `tls init` (in `init`),
//! which writes a private CA, a server certificate and client certificates.
//!
//! Names neither tonic nor the vault: the API layer hands it a peer certificate's DER and gets a
//! subject back. x509-parser and rcgen are named only here.

use std::collections::BTreeMap;

use crate::domain::Subject;

mod init;

pub use init::{CA_VALID_DAYS, InitOptions, LEAF_VALID_DAYS, init};

/// The trust domain of the SPIFFE URIs `tls init` writes: `spiffe://strongroom/svc/crm`.
pub const TRUST_DOMAIN: &str = "strongroom";

/// The SAN URI `tls init` gives a client certificate for `subject`: `svc:crm` ->
/// `spiffe://strongroom/svc/crm`.
pub fn spiffe_uri(subject: &Subject) -> String {
    let (namespace, name) = subject
        .as_str()
        .split_once(':')
        // A `Subject` is always `namespace:name` (see `Subject::parse`).
        .unwrap_or(("", subject.as_str()));
    format!("spiffe://{TRUST_DOMAIN}/{namespace}/{name}")
}

/// The subject a SPIFFE URI names: `spiffe://<any trust domain>/<namespace>/<name>` ->
/// `<namespace>:<name>`, if that is a valid subject.
fn spiffe_subject(uri: &str) -> Option<Subject> {
    let rest = uri.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    let (domain, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
    if domain.is_empty() || parts.next().is_some() {
        return None;
    }
    Subject::parse(&format!("{namespace}:{name}"), "certificate").ok()
}

/// Who a client certificate says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The subject it maps to.
    pub subject: Subject,
    /// The SAN URI that named it (for the audit log).
    pub uri: String,
}

/// Why a client certificate names no subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Its SAN URIs map to more than one subject.
    #[error("the client certificate names more than one subject")]
    Ambiguous,
    /// It does not parse as an X.509 certificate.
    #[error("the client certificate does not parse")]
    Malformed,
    /// No SAN URI maps to a subject.
    #[error(
        "the client certificate has no SAN URI naming a subject (spiffe://DOMAIN/NAMESPACE/NAME, \
         or one listed in [tls_identities])"
    )]
    NoIdentity,
}

/// How certificate identities map to subjects: an exact URI listed in the config's
/// `[tls_identities]` first, else `spiffe://<any trust domain>/<namespace>/<name>` ->
/// `<namespace>:<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    exact: BTreeMap<String, Subject>,
}

impl Identities {
    /// The default SPIFFE mapping plus the `exact` URIs.
    pub fn new(exact: BTreeMap<String, Subject>) -> Self {
        Self { exact }
    }

    /// The subject `uri` maps to, if any.
    pub fn subject_of(&self, uri: &str) -> Option<Subject> {
        self.exact.get(uri).cloned().or_else(|| spiffe_subject(uri))
    }

    /// The identity of the end-entity certificate `der` (already verified against the client
    /// CA by the TLS layer): its SAN URIs that map to a subject must all map to the same one.
    ///
    /// # Errors
    /// `IdentityError` if it does not parse, names no subject, or names two.
    pub fn identify(&self, der: &[u8]) -> Result<CertificateIdentity, IdentityError> {
        use x509_parser::{extensions::GeneralName, prelude::FromDer as _};
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|_| IdentityError::Malformed)?;
        let names = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::Malformed)?
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        let mut found: Option<CertificateIdentity> = None;
        for name in names {
            let GeneralName::URI(uri) = name else {
                continue;
            };
            let Some(subject) = self.subject_of(uri) else {
                continue;
            };
            match &found {
                Some(first) if first.subject != subject => return Err(IdentityError::Ambiguous),
                Some(_) => {}
                None => {
                    found = Some(CertificateIdentity {
                        subject,
                        uri: uri.to_owned(),
                    });
                }
            }
        }
        found.ok_or(IdentityError::NoIdentity)
    }
}

/// The largest private key file read (a PEM key is a few hundred bytes).
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Reads a PEM file of certificates and checks it, naming `label` (a config key or a flag) and
/// the file on a problem.
///
/// # Errors
/// A message naming `label` and the file: unreadable, or not certificates.
pub fn read_certificates(path: &std::path::Path, label: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("{label}: cannot read {shown}: {e}"))?;
    check_certificates_pem(&pem).map_err(|e| format!("{label}: {shown} {e}"))?;
    Ok(pem)
}

/// Reads a PEM file of certificates as `read_certificates` does; returns each certificate's DER.
///
/// # Errors
/// As `read_certificates`.
pub fn read_certificates_der(path: &std::path::Path, label: &str) -> Result<Vec<Vec<u8>>, String> {
    let pem = read_certificates(path, label)?;
    x509_parser::pem::Pem::iter_from_buffer(&pem)
        .map(|block| {
            block
                .map(|b| b.contents)
                .map_err(|e| format!("{label}: {} not PEM: {e}", path.display()))
        })
        .collect()
}

/// An error and its sources, on one line (tonic's transport errors say little at the top).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Checks that `pem` holds one or more X.509 certificates and nothing else that claims to be
/// one; returns how many.
///
/// # Errors
/// A short reason, for a message that names the file.
pub fn check_certificates_pem(pem: &[u8]) -> Result<usize, String> {
    let mut count = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "holds a {} block where only certificates belong",
                block.label
            ));
        }
        block
            .parse_x509()
            .map_err(|e| format!("certificate {} does not parse: {e}", count + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(s: &str) -> Subject {
        Subject::parse(s, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn spiffe_uris_map_to_subjects_and_back() {
        let ids = Identities::default();
        assert_eq!(
            ids.subject_of("spiffe://strongroom/svc/crm"),
            Some(subject("svc:crm"))
        );
        assert_eq!(
            ids.subject_of("spiffe://example.org/user/alice.smith"),
            Some(subject("user:alice.smith"))
        );
        assert_eq!(
            spiffe_uri(&subject("svc:crm")),
            "spiffe://strongroom/svc/crm"
        );
        for bad in [
            "spiffe://strongroom/role/admin",
            "spiffe:///svc/crm",
            "spiffe://strongroom/svc/crm/extra",
            "spiffe://strongroom/svc",
            "spiffe://strongroom/svc/CRM",
            "https://strongroom/svc/crm",
            "spiffe://strongroom/svc/",
        ] {
            assert_eq!(ids.subject_of(bad), None, "{bad}");
        }
        let mapped = Identities::new(BTreeMap::from([(
            "urn:example:billing".to_owned(),
            subject("app:billing"),
        )]));
        assert_eq!(
            mapped.subject_of("urn:example:billing"),
            Some(subject("app:billing"))
        );
        assert_eq!(mapped.subject_of("urn:example:billing2"), None);
    }

    #[test]
    fn only_pem_certificates_pass_the_check() {
        assert!(check_certificates_pem(b"").is_err());
        assert!(check_certificates_pem(b"hello").is_err());
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(check_certificates_pem(key.as_bytes()).is_err());
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(check_certificates_pem(junk.as_bytes()).is_err());
    }
}
