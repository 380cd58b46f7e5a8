//! The chain format: how an event is stored and chained, and the signed checkpoints.
//!
//! Stored event: `event | mac[32]` under key `seq` (big-endian u64), where `event` is the
//! binary encoding of `codec` and `mac = HMAC(chain key, previous mac | seq | event)`; the first
//! event's previous mac is 32 zero bytes (or, after pruning, the head of the anchor checkpoint).
//! A checkpoint signs `(seq, head, time)` with a second derived key.
//!
//! Depends on `codec`, `crypto` and `storage`; the appender, `query` and `verify` build on it.

use serde::{Deserialize, Serialize};

use super::{AuditError, CHECKPOINT_PREFIX, Event, codec};
use crate::{
    crypto::SubKey,
    storage::{Keyspace, Store},
};

pub(super) const MAC_LEN: usize = 32;

/// The two keys of the log.
pub(super) struct Keys {
    pub(super) chain: SubKey,
    pub(super) checkpoint: SubKey,
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
    /// HMAC-SHA256 of `(seq, head, time)` under the checkpoint key, hex.
    pub signature: String,
}

impl Checkpoint {
    pub(super) fn sign(keys: &Keys, seq: u64, head: [u8; 32], time_ms: i64) -> Self {
        let sig = keys.checkpoint.mac(&[
            b"checkpoint",
            &seq.to_be_bytes(),
            &head,
            &time_ms.to_be_bytes(),
        ]);
        Self {
            seq,
            head: hex::encode(head),
            time_ms,
            signature: hex::encode(sig),
        }
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

    /// The checkpoint stored under `key` in `meta`, if present and validly signed.
    pub(super) fn load_valid(
        store: &dyn Store,
        keys: &Keys,
        key: &[u8],
    ) -> Result<Option<Self>, AuditError> {
        Ok(read_checkpoint(store, key)?.filter(|c| c.valid(keys)))
    }

    pub(super) fn head_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.head, &mut out)
            .ok()
            .map(|()| out)
    }

    pub(super) fn valid(&self, keys: &Keys) -> bool {
        let (Some(head), Ok(sig)) = (self.head_bytes(), hex::decode(&self.signature)) else {
            return false;
        };
        keys.checkpoint.verify(
            &[
                b"checkpoint",
                &self.seq.to_be_bytes(),
                &head,
                &self.time_ms.to_be_bytes(),
            ],
            &sig,
        )
    }
}

pub(super) fn checkpoint_key(seq: u64) -> Vec<u8> {
    let mut k = CHECKPOINT_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn chain_mac(keys: &Keys, prev: &[u8; 32], seq: u64, json: &[u8]) -> [u8; 32] {
    keys.chain.mac(&[prev, &seq.to_be_bytes(), json])
}

/// The stored bytes of `event` chained after `prev`, and its MAC.
pub(super) fn encode_stored(keys: &Keys, event: &Event, prev: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
    let mut bytes = Vec::with_capacity(256);
    codec::encode(event, &mut bytes);
    let mac = chain_mac(keys, prev, event.seq, &bytes);
    bytes.extend_from_slice(&mac);
    (bytes, mac)
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

/// The smallest key after `key` (for paging through a keyspace).
pub(super) fn next_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
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
            && c.valid(keys)
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
        crypto::{Kek, KekId},
        testing::{fuzz, inputs},
    };

    fn keys() -> Keys {
        let kek = Kek::generate(KekId(1));
        Keys {
            chain: SubKey::derive(&kek, "audit-chain"),
            checkpoint: SubKey::derive(&kek, "audit-checkpoint"),
        }
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
        let keys = std::sync::Arc::new(keys());
        let signing = std::sync::Arc::clone(&keys);
        let valid =
            (any::<u64>(), any::<[u8; 32]>(), any::<i64>()).prop_map(move |(seq, head, time)| {
                Checkpoint::sign(&signing, seq, head, time).encode()
            });
        fuzz("audit checkpoint", 256, inputs(valid, JSON), |input| {
            let Ok(c) = serde_json::from_slice::<Checkpoint>(&input.bytes) else {
                return Ok(());
            };
            let _ = c.head_bytes();
            // A checkpoint that verifies says what a genuine one said: no forged statement.
            if c.valid(&keys) {
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
        let keys = std::sync::Arc::new(keys());
        let chaining = std::sync::Arc::clone(&keys);
        let valid = super::super::codec::tests::events().prop_map(move |bytes| {
            let event =
                codec::decode(&bytes).unwrap_or_else(|| panic!("a generated event decodes"));
            encode_stored(&chaining, &event, &[7; 32]).0
        });
        fuzz("audit stored event", 256, inputs(valid, &[]), |input| {
            if let Some((event, mac)) = decode_stored(&input.bytes) {
                let mut again = Vec::new();
                codec::encode(&event, &mut again);
                again.extend_from_slice(&mac);
                prop_assert_eq!(&again, &input.bytes);
                // Only an unaltered event carries a MAC that chains.
                let chains = chain_mac(
                    &keys,
                    &[7; 32],
                    event.seq,
                    &input.bytes[..again.len() - MAC_LEN],
                ) == mac;
                prop_assert_eq!(chains, input.unaltered());
            }
            Ok(())
        });
    }
}
