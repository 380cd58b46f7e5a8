//! The `Tokens` service: issuing, listing, rotating and revoking bearer tokens (admin role
//! only).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, tokens_server::Tokens},
    status::{Known, audited, recorded},
};
use crate::{
    audit::{Audit, Call},
    domain::{InvalidInput, Principal, Role, Schema, Subject, parse_duration},
    policy::PolicyEngine,
    vault::Error,
    vault::tokens::{DEFAULT_GRACE, Issued, MAX_GRACE, MAX_LIFETIME, Rotated, TokenRegistry},
};

/// The `Tokens` gRPC service.
#[derive(Debug, Clone)]
pub struct TokensApi {
    tokens: Arc<TokenRegistry>,
    policy: Arc<PolicyEngine>,
    audit: Arc<Audit>,
    schema: Arc<Schema>,
}

impl TokensApi {
    /// The service over the token registry; each change recompiles the policy for the
    /// registry's live principals. Purposes are those `schema` declares.
    pub fn new(
        tokens: Arc<TokenRegistry>,
        policy: Arc<PolicyEngine>,
        audit: Arc<Audit>,
        schema: Arc<Schema>,
    ) -> Self {
        Self {
            tokens,
            policy,
            audit,
            schema,
        }
    }
}

/// Milliseconds since the epoch for the wire: 0 for never.
fn expiry(ms: Option<i64>) -> i64 {
    ms.unwrap_or(0)
}

fn purpose_names(principal: &Principal) -> Vec<String> {
    principal
        .purposes
        .iter()
        .flatten()
        .map(|p| p.as_str().to_owned())
        .collect()
}

#[tonic::async_trait]
impl Tokens for TokensApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Tokens/CreateToken");
        let req = request.into_inner();
        let (this, by, change) = (self.clone(), caller.clone(), call.clone());
        let result = super::to_completion(async move { this.issue(&by, &change, req).await }).await;
        let (token, new) = audited(&self.audit, &caller, &call, Known::default(), result).await?;
        let Issued {
            principal: new,
            expires_at_ms,
            id,
            created_at_ms: _,
        } = new;
        tracing::info!(by = %caller.subject, subject = %new.subject, roles = %new.roles_text(), %id, "token issued");
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.to_string(),
            subject: new.subject.as_str().to_owned(),
            roles: new.role_names(),
            expires_at_unix_ms: expiry(expires_at_ms),
            purposes: purpose_names(&new),
            id,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Tokens/ListTokens");
        let result = self.tokens.list(&self.policy, &caller);
        let now = self.tokens.now_ms();
        let tokens = recorded(&self.audit, &caller, &call, result)
            .await?
            .into_iter()
            .map(|t| pb::TokenInfo {
                expired: t.is_expired(now),
                purposes: purpose_names(&t.principal),
                subject: t.principal.subject.as_str().to_owned(),
                roles: t.principal.role_names(),
                created_at_unix_ms: t.created_at_ms,
                expires_at_unix_ms: expiry(t.expires_at_ms),
                id: t.id,
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_tokens(
        &self,
        request: Request<pb::RevokeTokensRequest>,
    ) -> Result<Response<pb::RevokeTokensResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Tokens/RevokeTokens");
        let subject = request.into_inner().subject;
        let (this, by, event) = (self.clone(), caller.clone(), call.event(&caller));
        let result = super::to_completion(async move {
            let subject = Subject::parse(&subject, "subject")?;
            this.tokens
                .revoke_subject(&by, &subject, &this.audit, &this.policy, event)
                .await
        })
        .await;
        let revoked = audited(&self.audit, &caller, &call, Known::default(), result).await?;
        Ok(Response::new(pb::RevokeTokensResponse {
            revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }

    async fn rotate_token(
        &self,
        request: Request<pb::RotateTokenRequest>,
    ) -> Result<Response<pb::RotateTokenResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Tokens/RotateToken");
        let pb::RotateTokenRequest { id, grace } = request.into_inner();
        let (this, by, event) = (self.clone(), caller.clone(), call.event(&caller));
        let result = super::to_completion(async move {
            let valid_id =
                id.len() == 8 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !valid_id {
                return Err(InvalidInput::new(
                    "id",
                    "must be a token id: 8 lowercase hex digits, as `token list` shows",
                )
                .into());
            }
            let grace = if grace.trim().is_empty() {
                DEFAULT_GRACE
            } else {
                parse_duration(&grace, "grace", MAX_GRACE)?
            };
            this.tokens
                .rotate(&this.policy, &by, &id, grace, &this.audit, event)
                .await
        })
        .await;
        let Rotated {
            token,
            issued,
            old_id,
            old_expires_at_ms,
        } = audited(&self.audit, &caller, &call, Known::default(), result).await?;
        tracing::info!(by = %caller.subject, subject = %issued.principal.subject, old = %old_id, new = %issued.id, "token rotated");
        Ok(Response::new(pb::RotateTokenResponse {
            token: token.to_string(),
            subject: issued.principal.subject.as_str().to_owned(),
            roles: issued.principal.role_names(),
            purposes: purpose_names(&issued.principal),
            expires_at_unix_ms: expiry(issued.expires_at_ms),
            id: issued.id,
            old_id,
            old_expires_at_unix_ms: old_expires_at_ms,
        }))
    }
}

impl TokensApi {
    async fn issue(
        &self,
        caller: &Principal,
        call: &Call,
        req: pb::CreateTokenRequest,
    ) -> Result<(zeroize::Zeroizing<String>, Issued), Error> {
        let pb::CreateTokenRequest {
            subject,
            roles,
            expires_in,
            purposes,
        } = req;
        let subject = Subject::parse(&subject, "subject")?;
        if roles.is_empty() {
            return Err(InvalidInput::new("roles", "give at least one role").into());
        }
        let roles = roles
            .iter()
            .enumerate()
            .map(|(i, r)| Role::parse(r, &format!("roles[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let lifetime = if expires_in.trim().is_empty() {
            None
        } else {
            Some(parse_duration(&expires_in, "expires_in", MAX_LIFETIME)?)
        };
        // Bounded before anything is parsed per entry: at most one per declared purpose.
        if purposes.len() > self.schema.purposes().len() {
            return Err(InvalidInput::new(
                "purposes",
                format!(
                    "more than the {} declared purposes",
                    self.schema.purposes().len()
                ),
            )
            .into());
        }
        let purposes = if purposes.is_empty() {
            None
        } else {
            Some(
                purposes
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        self.schema
                            .purpose(p, &format!("purposes[{i}]"))
                            .map(|(_, p)| p)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let new = Principal::new(subject, roles).with_purposes(purposes);
        self.tokens
            .issue(
                caller,
                &new,
                lifetime,
                &self.audit,
                &self.policy,
                call.event(caller),
            )
            .await
    }
}
