//! Authentication: the interceptor that turns `authorization: Bearer <token>` into a
//! `Principal` before any handler runs, and the accessor handlers use. No principal, no call.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

use crate::{domain::Principal, tokens::TokenRegistry};

/// The interceptor put in front of every service but health.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<TokenRegistry>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An interceptor checking tokens against `tokens`.
    pub fn new(tokens: Arc<TokenRegistry>) -> Self {
        Self { tokens }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
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
        let principal = self
            .tokens
            .authenticate(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The caller of a request that passed the interceptor.
///
/// # Errors
/// `UNAUTHENTICATED` if the request carries no principal (fail closed: a service wired without
/// the interceptor serves nothing).
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}
