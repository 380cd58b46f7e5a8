//! The `Keys` service: rotate the key epochs (admins), see their status (admins, security
//! admins, auditors), and fetch the public key that verifies the vault's signatures (any
//! authenticated caller). Every call is an audit event.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    auth::principal,
    pb::{self, keys_server::Keys},
    status::{Known, audited, recorded},
};
use crate::{
    audit::Call,
    vault::{Error, Privilege, Vault, require, rotation::KeyStatus},
};

/// The `Keys` gRPC service.
#[derive(Debug, Clone)]
pub struct KeysApi {
    vault: Arc<Vault>,
}

impl KeysApi {
    /// The service over a vault's rotation and key provider.
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }

    /// The status, read on a blocking thread: counting keys scans the key store.
    async fn status(&self) -> Result<KeyStatus, Error> {
        let vault = Arc::clone(&self.vault);
        tokio::task::spawn_blocking(move || vault.rotation().status())
            .await
            .map_err(|e| Error::Internal(format!("key status task failed: {e}")))?
    }
}

fn to_pb(s: KeyStatus) -> pb::KeyStatus {
    let older: u64 = s
        .epochs
        .iter()
        .take(s.epochs.len().saturating_sub(1))
        .map(|e| e.keys)
        .sum();
    pb::KeyStatus {
        provider: s.provider.to_owned(),
        epochs: s
            .epochs
            .iter()
            .map(|e| pb::KeyEpoch {
                id: e.id.0,
                created_at_unix_ms: e.created_ms,
                keys: e.keys,
            })
            .collect(),
        rotating: s.rotating,
        rewrapped: s.rewrapped,
        keys_under_older_epochs: older,
        shred_horizon_ms: s.shred_horizon_ms,
        next_rotation_unix_ms: s.next_rotation_ms,
    }
}

#[tonic::async_trait]
impl Keys for KeysApi {
    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Keys/RotateKeys");
        // The rotation's start is the vault's own audit event; it runs to its durable start
        // even if the caller goes away.
        let (vault, by, change) = (Arc::clone(&self.vault), caller.clone(), call.clone());
        let result = super::to_completion(async move {
            vault.rotation().rotate(vault.policy(), &by, &change).await
        })
        .await;
        let status = audited(self.vault.audit(), &caller, &call, Known::default(), result).await?;
        Ok(Response::new(to_pb(status)))
    }

    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Keys/GetKeyStatus");
        let result = match require(self.vault.policy(), &caller, Privilege::ReadKeyStatus) {
            Ok(()) => self.status().await,
            Err(e) => Err(e),
        };
        let status = recorded(self.vault.audit(), &caller, &call, result).await?;
        Ok(Response::new(to_pb(status)))
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        let caller = principal(&request)?;
        let call = Call::new("Keys/GetPublicKey");
        let public = self.vault.key_provider().public_key();
        let result = public
            .to_pem()
            .map(|pem| pb::GetPublicKeyResponse {
                pem,
                fingerprint: public.fingerprint(),
            })
            .map_err(Error::Internal);
        Ok(Response::new(
            recorded(self.vault.audit(), &caller, &call, result).await?,
        ))
    }
}
