//! Authentication: a tower layer in front of every service but health that turns
//! `authorization: Bearer <token>` into a `Principal` before any handler runs. A call without a
//! valid token is answered UNAUTHENTICATED right here, and counted in the audit log under the
//! method it tried when that is one we serve (from the generated descriptors), else as
//! `(unknown)`: the caller's text is never written. Refusals are counted, not written one by
//! one, so a flood costs bounded memory and log space and never waits for the disk.
//!
//! With mTLS (a client CA configured), a call must also come over a connection whose client
//! certificate (verified against that CA by the TLS layer) names a subject, and its token must
//! belong to that same subject: a token stolen from one service is useless from another. The
//! certificate's identity goes into the principal, and from there into the audit events.

use std::{
    convert::Infallible,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use prost::Message as _;
use tonic::{
    Request, Status,
    body::Body,
    server::NamedService,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::Service;

use crate::{
    api::pb,
    audit::Audit,
    domain::Principal,
    storage::Batch,
    tls::Identities,
    vault::{
        limits::Limiter,
        tokens::{Credential, Rejection, TokenRegistry},
    },
};

/// Why a call was refused: a short reason for the audit log, and the status for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    CertificateMismatch,
    Expired,
    Malformed,
    Missing,
    NoCertificate,
    UnidentifiedCertificate,
    UnknownToken,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::CertificateMismatch => "token of another subject than the client certificate",
            Self::Expired => "expired token",
            Self::Malformed => "malformed authorization metadata",
            Self::Missing => "missing authorization metadata",
            Self::NoCertificate => "no client certificate",
            Self::UnidentifiedCertificate => "client certificate names no subject",
            Self::UnknownToken => "unknown or revoked token",
        }
    }

    fn status(self) -> Status {
        Status::unauthenticated(match self {
            Self::CertificateMismatch => {
                "the token does not belong to the client certificate's subject: present the \
                 token issued to the subject your certificate names"
            }
            Self::Expired => "the token has expired: ask for a new one",
            Self::Malformed => "authorization metadata must be `Bearer <token>`",
            Self::Missing => "missing authorization metadata: send `authorization: Bearer <token>`",
            Self::NoCertificate => {
                "this vault requires a client certificate (mTLS): connect with one issued by \
                 its client CA"
            }
            Self::UnidentifiedCertificate => {
                "the client certificate names no single subject: it needs a SAN URI \
                 spiffe://DOMAIN/NAMESPACE/NAME (or one the vault maps in [tls_identities])"
            }
            Self::UnknownToken => "unknown or revoked token",
        })
    }
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Expired => Self::Expired,
            Rejection::Unknown => Self::UnknownToken,
        }
    }
}

/// The methods of one service: `(method name, the name the audit log gives it)`.
type Methods = Arc<[(Box<str>, Arc<str>)]>;

/// The methods of `service` (a full name such as `strongroom.v1.Records`), read from the
/// descriptor sets of the services we serve behind the authenticator. The audit log names ours
/// without the package (`Records/GetRecord`), others in full.
fn methods_of(service: &str) -> Methods {
    let sets = [
        pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ];
    let short = service.strip_prefix("strongroom.v1.").unwrap_or(service);
    let mut methods = Vec::new();
    for bytes in sets {
        let set = match prost_types::FileDescriptorSet::decode(bytes) {
            Ok(set) => set,
            Err(e) => {
                // Compiled in: a failure is a build defect. Unknown methods are then only
                // recorded as `(unknown)`, which loses no refusal.
                tracing::error!(error = %e, "a compiled-in descriptor set does not decode");
                continue;
            }
        };
        for file in &set.file {
            for svc in &file.service {
                let full = match file.package() {
                    "" => svc.name().to_owned(),
                    package => format!("{package}.{}", svc.name()),
                };
                if full == service {
                    methods.extend(svc.method.iter().map(|m| {
                        let name = m.name();
                        (Box::from(name), Arc::from(format!("{short}/{name}")))
                    }));
                }
            }
        }
    }
    methods.into()
}

/// What authenticates calls: the token registry, the audit log for refusals, and with mTLS how
/// client certificates map to subjects.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<TokenRegistry>,
    audit: Arc<Audit>,
    certificates: Option<Arc<Identities>>,
    /// Per-subject request limits, checked once the caller is known.
    limits: Option<Arc<Limiter>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over `tokens`, auditing refusals to `audit`.
    pub fn new(tokens: Arc<TokenRegistry>, audit: Arc<Audit>) -> Self {
        Self {
            tokens,
            audit,
            certificates: None,
            limits: None,
        }
    }

    /// Requires every call to come with a client certificate naming, through `identities`, the
    /// subject of its token (mTLS: the TLS layer has verified the certificate against the
    /// client CA).
    #[must_use]
    pub fn with_client_certificates(mut self, identities: Identities) -> Self {
        self.certificates = Some(Arc::new(identities));
        self
    }

    /// Holds authenticated callers to the per-subject request limits of `limiter`.
    #[must_use]
    pub fn with_limits(mut self, limiter: Arc<Limiter>) -> Self {
        self.limits = Some(limiter);
        self
    }

    /// Wraps a service so that only authenticated calls reach it.
    pub fn guard<S: NamedService>(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.clone(),
            methods: methods_of(S::NAME),
        }
    }

    fn check(&self, request: &http::Request<Body>) -> Result<(Principal, Credential), Refusal> {
        let certified = match &self.certificates {
            None => None,
            Some(identities) => {
                let certs = request
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(TlsConnectInfo::peer_certs)
                    .ok_or(Refusal::NoCertificate)?;
                // The first is the client's own; the rest (if any) its chain to the CA.
                let leaf = certs.first().ok_or(Refusal::NoCertificate)?;
                Some(
                    identities
                        .identify(leaf)
                        .map_err(|_| Refusal::UnidentifiedCertificate)?,
                )
            }
        };
        let header = request
            .headers()
            .get("authorization")
            .ok_or(Refusal::Missing)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Refusal::Malformed)?;
        let (mut principal, credential) = self
            .tokens
            .authenticate(token.trim())
            .map_err(Refusal::from)?;
        if let Some(identity) = certified {
            if identity.subject != principal.subject {
                return Err(Refusal::CertificateMismatch);
            }
            principal.certificate = Some(identity.uri);
        }
        Ok((principal, credential))
    }
}

/// A service behind the authenticator.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Authenticator,
    methods: Methods,
}

/// The audit name of the method `path` calls, if it is one of `methods` of `service`.
fn known_method<'m>(methods: &'m Methods, service: &str, path: &str) -> Option<&'m Arc<str>> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(service)?
        .strip_prefix('/')?;
    methods
        .iter()
        .find(|(name, _)| **name == *method)
        .map(|(_, audit_name)| audit_name)
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: NamedService
        + Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        match self.auth.check(&request) {
            Ok((principal, credential)) => {
                if let Some(refused) = self.limited(&principal, request.uri().path()) {
                    return refused;
                }
                request.extensions_mut().insert(principal);
                request.extensions_mut().insert(credential);
                // The ready service handles this call; a fresh clone waits for the next one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(refusal) => {
                let source: Option<IpAddr> = request
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(TcpConnectInfo::remote_addr)
                    .map(|addr| addr.ip().to_canonical());
                let method = known_method(&self.methods, S::NAME, request.uri().path());
                self.auth
                    .audit
                    .record_refused(source, method, refusal.reason());
                let status = refusal.status();
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// A call's answer, to come.
type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S: NamedService> Authenticated<S> {
    /// The answer to a call of `principal` past its request limit, with the window's one
    /// alert written first; `None` when the call is within its limit.
    fn limited(&self, principal: &Principal, path: &str) -> Option<Answer> {
        let limiter = self.auth.limits.as_ref()?;
        let method = known_method(&self.methods, S::NAME, path)
            .map_or(crate::audit::UNKNOWN_METHOD, |m| &**m);
        let mut refused = limiter.admit(principal, method).err()?;
        let audit = Arc::clone(&self.auth.audit);
        Some(Box::pin(async move {
            if let Some(alert) = refused.alert.take()
                && let Err(e) = audit.commit(Batch::new(), vec![*alert]).await
            {
                tracing::error!(error = %e, "the alert of a request limit was not recorded");
            }
            Ok(Status::resource_exhausted(refused.message()).into_http())
        }))
    }
}

/// The caller of a request that passed the authenticator, checked again now: the token was
/// checked when the request's headers arrived, and a handler runs only after its body has, which
/// a caller can hold back past a revocation.
///
/// # Errors
/// `UNAUTHENTICATED` if the request carries no principal (fail closed: a service wired without
/// the authenticator serves nothing) or its token has been revoked or has expired since.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    credential(request)?
        .check()
        .map_err(|r| Refusal::from(r).status())?;
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The token the caller of a request that passed the authenticator presented, to notice its
/// revocation during a long-lived call.
///
/// # Errors
/// `UNAUTHENTICATED` if the request carries none (fail closed, as `principal`).
pub fn credential<T>(request: &Request<T>) -> Result<Credential, Status> {
    request
        .extensions()
        .get::<Credential>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_we_serve_is_known_by_its_audit_name() {
        let records = methods_of("strongroom.v1.Records");
        let names: Vec<&str> = records.iter().map(|(_, n)| &**n).collect();
        assert_eq!(
            names,
            [
                "Records/CreateRecord",
                "Records/GetRecord",
                "Records/UpdateRecord",
                "Records/DeleteRecord",
                "Records/FindRecords",
                "Records/ExportRecords",
                "Records/ExportSubject",
                "Records/EraseSubject",
                "Records/BatchGetRecords",
                "Records/BatchCreateRecords",
            ]
        );
        for service in [
            "strongroom.v1.Tokens",
            "strongroom.v1.Policies",
            "strongroom.v1.Audit",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(!methods_of(service).is_empty(), "{service}");
        }
        assert!(methods_of("strongroom.v1.Nope").is_empty());
    }

    #[test]
    fn only_a_served_method_is_named_never_the_callers_text() {
        let service = "strongroom.v1.Records";
        let methods = methods_of(service);
        let known = |path: &str| known_method(&methods, service, path).map(|m| m.to_string());
        assert_eq!(
            known("/strongroom.v1.Records/GetRecord").as_deref(),
            Some("Records/GetRecord")
        );
        let long = format!("/strongroom.v1.Records/{}", "A".repeat(15 * 1024));
        for path in [
            long.as_str(),
            "/strongroom.v1.Records/GetRecordX",
            "/strongroom.v1.Records/GetRecord/",
            "/strongroom.v1.Records/",
            "/strongroom.v1.RecordsGetRecord",
            "/strongroom.v1.Tokens/CreateToken",
            "strongroom.v1.Records/GetRecord",
            "/123-45-6789",
            "",
        ] {
            assert_eq!(known(path), None, "{path:.60}");
        }
    }
}
