//! The gRPC client the command line uses to talk to a running server: connection, bearer token,
//! and the calls. Knows nothing of how answers are printed.

use tonic::{
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::api::pb::{
    audit_client::AuditClient, keys_client::KeysClient, policies_client::PoliciesClient,
    records_client::RecordsClient, tokens_client::TokensClient,
};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// An authenticated channel.
pub type Authed = InterceptedService<Channel, BearerToken>;

/// Clients for every service, sharing one connection and token.
#[derive(Debug, Clone)]
pub struct Client {
    /// The `Records` service.
    pub records: RecordsClient<Authed>,
    /// The `Tokens` service.
    pub tokens: TokensClient<Authed>,
    /// The `Policies` service.
    pub policies: PoliciesClient<Authed>,
    /// The `Audit` service.
    pub audit: AuditClient<Authed>,
    /// The `Keys` service.
    pub keys: KeysClient<Authed>,
}

/// Connects to `addr` (`http://host:port`, or `host:port`) with `token`.
///
/// # Errors
/// A message saying why the address or token is unusable, or the connection failed.
pub async fn connect(addr: &str, token: &str) -> Result<Client, String> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint =
        Endpoint::from_shared(url.clone()).map_err(|e| format!("bad address {url}: {e}"))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let value: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token holds characters not allowed in a header".to_owned())?;
    let auth = BearerToken(value);
    Ok(Client {
        records: RecordsClient::with_interceptor(channel.clone(), auth.clone()),
        tokens: TokensClient::with_interceptor(channel.clone(), auth.clone()),
        policies: PoliciesClient::with_interceptor(channel.clone(), auth.clone()),
        audit: AuditClient::with_interceptor(channel.clone(), auth.clone()),
        keys: KeysClient::with_interceptor(channel, auth),
    })
}
