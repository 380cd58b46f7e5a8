//! The `Tokens` service: issuing bearer tokens (admin role only).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, tokens_server::Tokens},
    status::{Known, audited, recorded},
};
use crate::{
    audit::{Audit, Call},
    domain::{InvalidInput, Principal, Role, Subject},
    policy::PolicyEngine,
    vault::tokens::TokenRegistry,
    vault::{Error, now_ms},
};

/// The `Tokens` gRPC service.
#[derive(Debug, Clone)]
pub struct TokensApi {
    tokens: Arc<TokenRegistry>,
    policy: Arc<PolicyEngine>,
    audit: Arc<Audit>,
}

impl TokensApi {
    /// The service over the token registry; each change recompiles the policy for the
    /// registry's live principals.
    pub fn new(tokens: Arc<TokenRegistry>, policy: Arc<PolicyEngine>, audit: Arc<Audit>) -> Self {
        Self {
            tokens,
            policy,
            audit,
        }
    }
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
        let result =
            super::to_completion(async move { this.issue(&by, &change, &req).await }).await;
        let (token, new) = audited(&self.audit, &caller, &call, Known::default(), result).await?;
        tracing::info!(by = %caller.subject, subject = %new.subject, roles = %new.roles_text(), "token issued");
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.to_string(),
            subject: new.subject.as_str().to_owned(),
            roles: new.role_names(),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Tokens/ListTokens");
        let result = self.tokens.list(&self.policy, &caller);
        let tokens = recorded(&self.audit, &caller, &call, result)
            .await?
            .into_iter()
            .map(|t| pb::TokenInfo {
                id: t.id,
                subject: t.principal.subject.as_str().to_owned(),
                roles: t.principal.role_names(),
                created_at_unix_ms: t.created_at_ms,
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
}

impl TokensApi {
    async fn issue(
        &self,
        caller: &Principal,
        call: &Call,
        req: &pb::CreateTokenRequest,
    ) -> Result<(zeroize::Zeroizing<String>, Principal), Error> {
        let subject = Subject::parse(&req.subject, "subject")?;
        if req.roles.is_empty() {
            return Err(InvalidInput::new("roles", "give at least one role").into());
        }
        let roles = req
            .roles
            .iter()
            .enumerate()
            .map(|(i, r)| Role::parse(r, &format!("roles[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let new = Principal::new(subject, roles);
        let token = self
            .tokens
            .issue(
                caller,
                &new,
                now_ms(),
                &self.audit,
                &self.policy,
                call.event(caller),
            )
            .await?;
        Ok((token, new))
    }
}
