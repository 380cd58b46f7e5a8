//! Authentication: a tower layer in front of every service but health that turns
//! `authorization: Bearer <token>` into a `Principal` before any handler runs. A call without a
//! valid token is answered UNAUTHENTICATED right here, and audited with the method it tried.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{Request, Status, body::Body, server::NamedService};
use tower::Service;

use crate::{
    audit::{Audit, Event},
    domain::Principal,
    tokens::{Credential, TokenRegistry},
};

/// What authenticates calls: the token registry, and the audit log for refusals.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<TokenRegistry>,
    audit: Arc<Audit>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator over `tokens`, auditing refusals to `audit`.
    pub fn new(tokens: Arc<TokenRegistry>, audit: Arc<Audit>) -> Self {
        Self { tokens, audit }
    }

    /// Wraps a service so that only authenticated calls reach it.
    pub fn guard<S>(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: self.clone(),
        }
    }

    fn check(&self, headers: &http::HeaderMap) -> Result<(Principal, Credential), Status> {
        let header = headers.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing authorization metadata: send `authorization: Bearer <token>`",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be `Bearer <token>`")
            })?;
        self.tokens
            .authenticate(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))
    }
}

/// A service behind the authenticator.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Authenticator,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
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
        match self.auth.check(request.headers()) {
            Ok((principal, credential)) => {
                request.extensions_mut().insert(principal);
                request.extensions_mut().insert(credential);
                // The ready service handles this call; a fresh clone waits for the next one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => {
                let method = request.uri().path().trim_start_matches('/');
                let method = method.strip_prefix("strongroom.v1.").unwrap_or(method);
                self.auth.audit.record_detached(Event {
                    method: method.to_owned(),
                    result: "UNAUTHENTICATED".into(),
                    detail: status.message().to_owned(),
                    ..Event::default()
                });
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The caller of a request that passed the authenticator.
///
/// # Errors
/// `UNAUTHENTICATED` if the request carries no principal (fail closed: a service wired without
/// the authenticator serves nothing).
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
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
