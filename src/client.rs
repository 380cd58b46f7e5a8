//! The gRPC client the command line uses to talk to a running server: connection (plaintext, or
//! TLS with a CA and optionally a client certificate), bearer token, and the calls. Knows nothing
//! of how answers are printed.

use std::path::Path;

use tonic::{
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::api::pb::{
    audit_client::AuditClient, consent_client::ConsentClient, holds_client::HoldsClient,
    keys_client::KeysClient, policies_client::PoliciesClient, records_client::RecordsClient,
    retention_client::RetentionClient, tokens_client::TokensClient,
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
    /// The `Holds` service.
    pub holds: HoldsClient<Authed>,
    /// The `Consent` service.
    pub consent: ConsentClient<Authed>,
    /// The `Retention` service.
    pub retention: RetentionClient<Authed>,
}

/// How a client reaches a TLS listener: the CA that signed the server's certificate, and for
/// mTLS the client's certificate and key. No `Debug` of the key.
#[derive(Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

impl ClientTls {
    /// Reads the CA certificate (`ca_cert`, PEM), and for mTLS the client certificate and key
    /// (`client`: certificate PEM, key PEM; the key a file of ours, mode 0600).
    ///
    /// # Errors
    /// A message naming the flag and the file that cannot be used.
    pub fn from_files(ca_cert: &Path, client: Option<(&Path, &Path)>) -> Result<Self, String> {
        let ca = crate::tls::read_certificates(ca_cert, "--ca-cert")?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert_path, key_path)) = client {
            let cert = crate::tls::read_certificates(cert_path, "--client-cert")?;
            let key = crate::files::read_secret(
                key_path,
                "--client-key",
                crate::tls::MAX_KEY_FILE_BYTES,
            )?;
            config = config.identity(Identity::from_pem(cert, &*key));
        }
        Ok(Self { config })
    }
}

/// The URL of `addr`, checked against `tls`: `https://` needs a CA, a CA needs `https://`, and
/// a bare `host:port` is `https://` with a CA and `http://` without.
fn url_of(addr: &str, tls: bool) -> Result<String, String> {
    match (addr.split_once("://").map(|(scheme, _)| scheme), tls) {
        (Some("https"), true) | (Some("http"), false) => Ok(addr.to_owned()),
        (None, true) => Ok(format!("https://{addr}")),
        (None, false) => Ok(format!("http://{addr}")),
        (Some("https"), false) => Err(format!(
            "{addr} is an https:// address, but no CA certificate was given to check the \
             server's: pass --ca-cert (or set STRONGROOM_CA_CERT), e.g. ca.pem from \
             `strongroom tls init`"
        )),
        (Some("http"), true) => Err(format!(
            "{addr} is a plaintext http:// address, but a CA certificate was given for TLS: \
             use https://"
        )),
        (Some(other), _) => Err(format!(
            "{addr}: unknown scheme {other:?}; use http:// (loopback) or https://"
        )),
    }
}

/// A channel to `addr` (`http://host:port`, `https://host:port`, or `host:port`), over TLS when
/// `tls` is given (the bench and the CLI share it).
///
/// # Errors
/// A message saying why the address or TLS settings are unusable, or the connection failed.
pub async fn channel(addr: &str, tls: Option<&ClientTls>) -> Result<Channel, String> {
    let url = url_of(addr, tls.is_some())?;
    let mut endpoint =
        Endpoint::from_shared(url.clone()).map_err(|e| format!("bad address {url}: {e}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config.clone())
            .map_err(|e| format!("TLS settings for {url}: {}", crate::tls::error_chain(&e)))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {}", crate::tls::error_chain(&e)))
}

/// Connects to `addr` (`http://host:port`, or `host:port`) with `token`, in plaintext.
///
/// # Errors
/// A message saying why the address or token is unusable, or the connection failed.
pub async fn connect(addr: &str, token: &str) -> Result<Client, String> {
    connect_with(addr, token, None).await
}

/// Connects to `addr` with `token`, over TLS when `tls` is given (`https://` addresses).
///
/// # Errors
/// As `connect`, and a message if the address and `tls` disagree (see `channel`).
pub async fn connect_with(
    addr: &str,
    token: &str,
    tls: Option<&ClientTls>,
) -> Result<Client, String> {
    let channel = channel(addr, tls).await?;
    let value: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token holds characters not allowed in a header".to_owned())?;
    let auth = BearerToken(value);
    Ok(Client {
        records: RecordsClient::with_interceptor(channel.clone(), auth.clone()),
        tokens: TokensClient::with_interceptor(channel.clone(), auth.clone()),
        policies: PoliciesClient::with_interceptor(channel.clone(), auth.clone()),
        audit: AuditClient::with_interceptor(channel.clone(), auth.clone()),
        keys: KeysClient::with_interceptor(channel.clone(), auth.clone()),
        holds: HoldsClient::with_interceptor(channel.clone(), auth.clone()),
        consent: ConsentClient::with_interceptor(channel.clone(), auth.clone()),
        retention: RetentionClient::with_interceptor(channel, auth),
    })
}
