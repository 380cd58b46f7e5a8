//! The chain format: how an event is stored and chained, and the signed checkpoints.
//!
//! Stored event: `event | hash[32]` under key `seq` (big-endian u64), where `event` is the
//! binary encoding of `codec` and `hash = SHA-256(domain | previous hash | seq | event)`; the
//! first event's previous hash is 32 zero bytes (or, after pruning, the head of the anchor
//! checkpoint). A checkpoint signs `(seq, head, time)` with the vault's Ed25519 key (from the
//! key provider), and the head checkpoint moves with every appended batch, so every durable
//! event is covered by a signature. The hashes are public: anyone with an export and the public
//! key can check the chain, and nobody without the signing key can extend or alter it.
//!
//! Depends on `codec`, `crypto` and `storage`; the appender, `query` and `verify` build on it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{AuditError, CHECKPOINT_PREFIX, Event, codec};
use crate::{
    crypto::{KeyProvider, PublicKey, Signature, verify_signature},
    storage::{Keyspace, Store},
};

pub(super) const MAC_LEN: usize = 32;
const CHAIN_DOMAIN: &[u8] = b"strongroom/audit-chain/v2";
const CHECKPOINT_DOMAIN: &[u8] = b"strongroom/audit-checkpoint/v2";

/// What the log signs with, and the public key its signatures are checked against.
pub(super) struct Keys {
    pub(super) signer: Arc<dyn KeyProvider>,
    pub(super) public: PublicKey,
}

impl Keys {
    pub(super) fn new(signer: Arc<dyn KeyProvider>) -> Self {
        let public = signer.public_key();
        Self { signer, public }
    }
}

/// A signed statement: the chain had this head at this sequence number at this time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last event covered.
    pub seq: u64,
    /// The chain MAC of that event, hex.
    pub head: String,
    /// When (ms since the epoch).
    pub time_ms: i64,
    /// Ed25519 signature of `(seq, head, time)` by the vault's signing key, hex.
    pub signature: String,
}

fn signed_bytes(seq: u64, head: &[u8; 32], time_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
    out.extend_from_slice(CHECKPOINT_DOMAIN);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(&time_ms.to_be_bytes());
    out
}

impl Checkpoint {
    pub(super) fn sign(
        keys: &Keys,
        seq: u64,
        head: [u8; 32],
        time_ms: i64,
    ) -> Result<Self, AuditError> {
        let sig = keys
            .signer
            .sign(&signed_bytes(seq, &head, time_ms))
            .map_err(|e| AuditError::new(format!("cannot sign the audit head: {e}")))?;
        Ok(Self {
            seq,
            head: hex::encode(head),
            time_ms,
            signature: hex::encode(sig.0),
        })
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        // A struct of integers and hex strings: serializing it to JSON cannot fail.
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("a checkpoint always serializes")
    }

    /// The checkpoint stored under `key` in `meta`, if present and well-formed.
    pub(super) fn load(store: &dyn Store, key: &[u8]) -> Result<Option<Self>, AuditError> {
        read_checkpoint(store, key)
    }

    pub(super) fn head_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.head, &mut out)
            .ok()
            .map(|()| out)
    }

    /// Whether the signature is the vault's over this checkpoint: all an auditor needs is
    /// the public key.
    pub fn valid(&self, public: &PublicKey) -> bool {
        let Some(head) = self.head_bytes() else {
            return false;
        };
        let mut sig = [0u8; 64];
        if hex::decode_to_slice(&self.signature, &mut sig).is_err() {
            return false;
        }
        verify_signature(
            public,
            &signed_bytes(self.seq, &head, self.time_ms),
            &Signature(sig),
        )
    }
}

pub(super) fn checkpoint_key(seq: u64) -> Vec<u8> {
    let mut k = CHECKPOINT_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The chain hash of the event encoded as `event` at `seq`, after `prev`.
pub(super) fn chain_mac(prev: &[u8; 32], seq: u64, event: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(CHAIN_DOMAIN);
    hash.update(prev);
    hash.update(seq.to_be_bytes());
    hash.update(event);
    hash.finalize().into()
}

/// The stored bytes of `event` chained after `prev`, and its hash.
pub(super) fn encode_stored(event: &Event, prev: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
    let mut bytes = Vec::with_capacity(256);
    codec::encode(event, &mut bytes);
    let mac = chain_mac(prev, event.seq, &bytes);
    bytes.extend_from_slice(&mac);
    (bytes, mac)
}

/// The stored bytes of `event` with the chain hash `mac` it was stored with.
pub(super) fn encode_stored_with_mac(event: &Event, mac: &[u8; 32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    codec::encode(event, &mut bytes);
    bytes.extend_from_slice(mac);
    bytes
}

/// Splits stored bytes into the event and its MAC.
pub(super) fn decode_stored(value: &[u8]) -> Option<(Event, [u8; 32])> {
    let split = value.len().checked_sub(MAC_LEN)?;
    let (json, mac) = value.split_at(split);
    let event = codec::decode(json)?;
    Some((event, mac.try_into().ok()?))
}

pub(super) fn read_checkpoint(
    store: &dyn Store,
    key: &[u8],
) -> Result<Option<Checkpoint>, AuditError> {
    Ok(store
        .get(Keyspace::Meta, key)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// The newest valid durable checkpoint older than `cut_ms`.
pub(super) fn newest_checkpoint_before(
    store: &dyn Store,
    keys: &Keys,
    cut_ms: i64,
) -> Result<Option<Checkpoint>, AuditError> {
    let mut best = None;
    for (_, bytes) in store.scan_prefix(Keyspace::Meta, CHECKPOINT_PREFIX)? {
        if let Ok(c) = serde_json::from_slice::<Checkpoint>(&bytes)
            && c.valid(&keys.public)
            && c.time_ms < cut_ms
        {
            best = Some(c);
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        crypto::Keyring,
        testing::{fuzz, inputs},
    };

    fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ring = Keyring::open_file(dir.path().join("keyring")).unwrap_or_else(|e| panic!("{e}"));
        (dir, Keys::new(Arc::new(ring)))
    }

    const JSON: &[&str] = &[
        "{",
        "}",
        "\"",
        ":",
        ",",
        "[",
        "]",
        "null",
        "true",
        "-",
        "1e400",
        "18446744073709551616",
        "\\u0000",
        "\"seq\":",
        "\"head\":",
        "\"time_ms\":",
        "\"signature\":",
        " ",
    ];

    #[test]
    fn fuzz_checkpoints() {
        let (_dir, keys) = keys();
        let keys = Arc::new(keys);
        let signing = Arc::clone(&keys);
        let valid =
            (any::<u64>(), any::<[u8; 32]>(), any::<i64>()).prop_map(move |(seq, head, time)| {
                Checkpoint::sign(&signing, seq, head, time)
                    .map(|c| c.encode())
                    .unwrap_or_else(|e| panic!("{e}"))
            });
        fuzz("audit checkpoint", 256, inputs(valid, JSON), |input| {
            let Ok(c) = serde_json::from_slice::<Checkpoint>(&input.bytes) else {
                return Ok(());
            };
            let _ = c.head_bytes();
            // A checkpoint that verifies says what a genuine one said: no forged statement.
            if c.valid(&keys.public) {
                let genuine = [&input.valid, &input.donor]
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_slice::<Checkpoint>(v).ok())
                    .any(|g| {
                        (g.seq, g.head_bytes(), g.time_ms) == (c.seq, c.head_bytes(), c.time_ms)
                    });
                prop_assert!(genuine, "a forged checkpoint verified: {c:?}");
            }
            Ok(())
        });
    }

    #[test]
    fn fuzz_stored_events() {
        let valid = super::super::codec::tests::events().prop_map(move |bytes| {
            let event =
                codec::decode(&bytes).unwrap_or_else(|| panic!("a generated event decodes"));
            encode_stored(&event, &[7; 32]).0
        });
        fuzz("audit stored event", 256, inputs(valid, &[]), |input| {
            if let Some((event, mac)) = decode_stored(&input.bytes) {
                let mut again = Vec::new();
                codec::encode(&event, &mut again);
                again.extend_from_slice(&mac);
                prop_assert_eq!(&again, &input.bytes);
                // Only an unaltered event carries a MAC that chains.
                let chains =
                    chain_mac(&[7; 32], event.seq, &input.bytes[..again.len() - MAC_LEN]) == mac;
                prop_assert_eq!(chains, input.unaltered());
            }
            Ok(())
        });
    }
}
