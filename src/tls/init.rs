//! `strongroom tls init`: a private CA, a server certificate for the names given, and one
//! client certificate per subject (its identity a SAN URI `spiffe://strongroom/<ns>/<name>`),
//! so a team can start with TLS and mTLS in one command. Keys are ECDSA P-256 (rcgen over ring).
//! Files are never overwritten; keys are written 0600 in a directory of mode 0700.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use zeroize::Zeroizing;

use crate::domain::Subject;

/// How long the CA certificate is valid: ten years (it only signs; rotate it by running
/// `tls init` again into a new directory).
pub const CA_VALID_DAYS: i64 = 3650;

/// How long server and client certificates are valid: one year.
pub const LEAF_VALID_DAYS: i64 = 365;

/// What `tls init` writes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The directory (created 0700 if missing).
    pub dir: PathBuf,
    /// DNS names and IP addresses of the server certificate; `localhost` and `127.0.0.1` if
    /// empty.
    pub names: Vec<String>,
    /// One client certificate per subject.
    pub clients: Vec<Subject>,
}

/// The validity of a certificate issued today for `days`: from yesterday (clocks disagree a
/// little), in whole UTC days.
fn validity(params: &mut CertificateParams, days: i64) -> Result<(), String> {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let bad = |e: jiff::Error| format!("cannot compute the validity dates: {e}");
    let start = today.yesterday().map_err(bad)?;
    let end = today
        .checked_add(jiff::Span::new().days(days))
        .map_err(bad)?;
    let rc = |d: jiff::civil::Date| {
        // Months and days are small positive numbers.
        rcgen::date_time_ymd(
            i32::from(d.year()),
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day()).unwrap_or(1),
        )
    };
    params.not_before = rc(start);
    params.not_after = rc(end);
    Ok(())
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "strongroom");
    dn.push(DnType::CommonName, cn);
    dn
}

fn rc_error(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("cannot make the {what}: {e}")
}

/// A certificate to write: its file stem, PEM certificate and PEM key.
struct Issued {
    stem: String,
    cert: String,
    key: Zeroizing<String>,
}

/// The file name of a client certificate for `subject`: `svc:crm` -> `client-svc-crm`.
fn client_stem(subject: &Subject) -> String {
    format!("client-{}", subject.as_str().replace(':', "-"))
}

/// Writes `ca.pem`/`ca.key`, `server.pem`/`server.key` and `client-<ns>-<name>.pem`/`.key` per
/// client into `options.dir`; returns the paths written. Nothing is written if any of them
/// exists already.
///
/// # Errors
/// A message naming the file or name that is the problem.
pub fn init(options: &InitOptions) -> Result<Vec<PathBuf>, String> {
    let names = if options.names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        options.names.clone()
    };
    let mut stems = vec!["ca".to_owned(), "server".to_owned()];
    for client in &options.clients {
        let stem = client_stem(client);
        if stems.contains(&stem) {
            return Err(format!("--client {client}: given twice"));
        }
        stems.push(stem);
    }
    let dir = &options.dir;
    let paths = |stem: &str| {
        (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        )
    };
    // Refuse before writing anything: a half-replaced CA would be worse than none.
    for stem in &stems {
        let (cert, key) = paths(stem);
        for path in [cert, key] {
            if fs::symlink_metadata(&path).is_ok() {
                return Err(format!(
                    "{} exists: tls init never overwrites; choose another directory or move \
                     the old files away",
                    path.display()
                ));
            }
        }
    }

    let ca_key = KeyPair::generate().map_err(rc_error("CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("strongroom private CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, CA_VALID_DAYS)?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(rc_error("CA certificate"))?;
    let mut issued = vec![Issued {
        stem: "ca".into(),
        cert: ca_cert.pem(),
        key: Zeroizing::new(ca_key.serialize_pem()),
    }];
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(rc_error("server key"))?;
    let mut server = CertificateParams::new(names.clone())
        .map_err(|e| format!("--name: {names:?} holds a name that is not a DNS name or IP: {e}"))?;
    server.distinguished_name = name(names.first().map_or("strongroom", String::as_str));
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    validity(&mut server, LEAF_VALID_DAYS)?;
    issued.push(Issued {
        stem: "server".into(),
        cert: server
            .signed_by(&server_key, &issuer)
            .map_err(rc_error("server certificate"))?
            .pem(),
        key: Zeroizing::new(server_key.serialize_pem()),
    });

    for client in &options.clients {
        let key = KeyPair::generate().map_err(rc_error("client key"))?;
        let uri = super::spiffe_uri(client);
        let mut params = CertificateParams::default();
        params.distinguished_name = name(client.as_str());
        params.subject_alt_names =
            vec![SanType::URI(uri.clone().try_into().map_err(|e| {
                format!("--client {client}: {uri} is not a URI: {e}")
            })?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALID_DAYS)?;
        issued.push(Issued {
            stem: client_stem(client),
            cert: params
                .signed_by(&key, &issuer)
                .map_err(rc_error("client certificate"))?
                .pem(),
            key: Zeroizing::new(key.serialize_pem()),
        });
    }

    crate::files::private_dir(dir, "TLS dir")?;
    let mut written = Vec::new();
    for Issued { stem, cert, key } in &issued {
        let (cert_path, key_path) = paths(stem);
        write_new(&key_path, key.as_bytes(), 0o600)?;
        written.push(key_path);
        write_new(&cert_path, cert.as_bytes(), 0o644)?;
        written.push(cert_path);
    }
    crate::files::sync_dir(dir)?;
    Ok(written)
}

/// Writes a file that must not exist yet, with `mode` (narrowed by the umask), synced.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::tls::{Identities, IdentityError};

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        block.contents
    }

    #[test]
    fn writes_a_ca_server_and_clients_once_with_private_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let options = InitOptions {
            dir: dir.clone(),
            names: vec![],
            clients: vec![
                Subject::parse("svc:crm", "c").unwrap(),
                Subject::parse("user:alice", "c").unwrap(),
            ],
        };
        let written = init(&options).unwrap();
        assert_eq!(written.len(), 8);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for path in &written {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            if path.extension().is_some_and(|e| e == "key") {
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
        for cert in ["ca.pem", "server.pem", "client-svc-crm.pem"] {
            assert_eq!(
                crate::tls::check_certificates_pem(read(cert).as_bytes()),
                Ok(1)
            );
        }
        // The client certificate names its subject; the server's names none.
        let ids = Identities::default();
        let crm = ids.identify(&der_of(&read("client-svc-crm.pem"))).unwrap();
        assert_eq!(crm.subject.as_str(), "svc:crm");
        assert_eq!(crm.uri, "spiffe://strongroom/svc/crm");
        assert_eq!(
            ids.identify(&der_of(&read("server.pem"))),
            Err(IdentityError::NoIdentity)
        );
        assert_eq!(ids.identify(b"junk"), Err(IdentityError::Malformed));

        // A second run refuses, naming the file, and changes nothing.
        let before = read("ca.key");
        let err = init(&options).unwrap_err();
        assert!(err.contains("ca.pem exists"), "{err}");
        assert_eq!(read("ca.key"), before);
        // Even when only one file of the set is there.
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("client-user-alice.key"), "mine").unwrap();
        let err = init(&InitOptions {
            dir: other.clone(),
            ..options
        })
        .unwrap_err();
        assert!(err.contains("client-user-alice.key exists"), "{err}");
        assert!(!other.join("ca.pem").exists());
    }
}
