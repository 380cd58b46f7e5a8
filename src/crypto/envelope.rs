//! The ciphertext formats.
//!
//! Field: `0x01 | nonce[24] | XChaCha20-Poly1305(plaintext)`, AAD binding what the ciphertext is
//! for: collection, record id, field name, DEK id, and the record version (so an older
//! ciphertext replayed into a newer record fails).
//!
//! Wrapped DEK: what the key provider seals (`dek id | dek key`) under a key epoch, with the
//! AAD binding record id, epoch, collection, record version and field manifest, and for a
//! honeytoken one more part (`honeytoken`), so that its flag cannot be cleared (or set) unnoticed;
//! the AAD of any other record is the one it was before the flag existed. The epoch itself is
//! stored beside the wrapped key (see `vault::keystore`).
//!
//! An unknown version byte is an error, never a fallback.

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::RngCore;
use zeroize::Zeroizing;

use super::{
    DecryptError, Dek, DekId, WrappedDek,
    provider::{EpochId, KeyError, KeyProvider},
};

const FIELD_V1: u8 = 0x01;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const FIELD_AAD_DOMAIN: &[u8] = b"strongroom/field/v1";
const WRAP_AAD_DOMAIN: &[u8] = b"strongroom/dek/v2";
/// The last part of a honeytoken's wrapped-key AAD (absent for any other record).
const WRAP_AAD_HONEYTOKEN: &[u8] = b"honeytoken";

/// What a field ciphertext is bound to.
#[derive(Debug, Clone, Copy)]
pub struct FieldContext<'a> {
    /// The record's collection.
    pub collection: &'a str,
    /// The record id bytes.
    pub record_id: &'a [u8; 16],
    /// The field name.
    pub field: &'a str,
    /// The record version the ciphertext was written at.
    pub record_version: u64,
}

/// Length-prefixed concatenation, so that no two different contexts give the same AAD.
fn aad(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(domain.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(domain);
    for part in parts {
        // Parts are names and ids, far below 4 GiB.
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn field_aad(dek: DekId, ctx: &FieldContext<'_>) -> Vec<u8> {
    aad(
        FIELD_AAD_DOMAIN,
        &[
            ctx.collection.as_bytes(),
            ctx.record_id,
            ctx.field.as_bytes(),
            &dek.0,
            &ctx.record_version.to_be_bytes(),
        ],
    )
}

/// Seals `plaintext` under `key`: `version | nonce[24] | ciphertext+tag`.
pub(super) fn seal_with(key: &[u8; 32], version: u8, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    // A userspace CSPRNG seeded from the OS: 192-bit random nonces never repeat in practice.
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(version);
    out.extend_from_slice(&nonce);
    // XChaCha20-Poly1305 encryption fails only past 256 GiB of plaintext (its block counter);
    // field values are bounded by `max_value_bytes` and wrapped keys are 48 bytes.
    #[allow(clippy::expect_used)]
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any plaintext under 256 GiB");
    out.extend_from_slice(&sealed);
    out
}

/// Opens what `seal_with` sealed under the same key, version byte and AAD.
pub(super) fn open_with(
    key: &[u8; 32],
    version: u8,
    envelope: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let (&v, rest) = envelope.split_first().ok_or(DecryptError)?;
    if v != version || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(DecryptError);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| DecryptError)
}

/// Seals one field value under a record's DEK.
pub fn seal_field(dek: &Dek, ctx: &FieldContext<'_>, plaintext: &str) -> Vec<u8> {
    seal_with(
        dek.bytes(),
        FIELD_V1,
        plaintext.as_bytes(),
        &field_aad(dek.id(), ctx),
    )
}

/// Opens one field ciphertext.
///
/// # Errors
/// `DecryptError` if the envelope is malformed, of an unknown version, was altered, or was
/// sealed for another collection, record, field, DEK or record version.
pub fn open_field(
    dek: &Dek,
    ctx: &FieldContext<'_>,
    envelope: &[u8],
) -> Result<Zeroizing<String>, DecryptError> {
    let mut bytes = open_with(dek.bytes(), FIELD_V1, envelope, &field_aad(dek.id(), ctx))?;
    let taken = std::mem::take(&mut *bytes);
    String::from_utf8(taken).map(Zeroizing::new).map_err(|e| {
        // Zeroize the rejected bytes too.
        drop(Zeroizing::new(e.into_bytes()));
        DecryptError
    })
}

/// What a wrapped DEK is bound to: its record, that record's collection and version, the
/// manifest of fields the record holds at that version (so a field ciphertext cannot be removed
/// unnoticed), and whether it is a honeytoken (so its tripwire cannot be disabled unnoticed).
#[derive(Debug, Clone, Copy)]
pub struct DekContext<'a> {
    /// The record id bytes.
    pub record_id: &'a [u8; 16],
    /// The record's collection.
    pub collection: &'a str,
    /// The record version.
    pub record_version: u64,
    /// Bit `i` set when field `i` of the collection holds a value.
    pub manifest: u64,
    /// A honeytoken (decoy) record.
    pub honeytoken: bool,
}

fn wrap_aad(epoch: EpochId, ctx: &DekContext<'_>) -> Vec<u8> {
    let epoch = epoch.0.to_be_bytes();
    let version = ctx.record_version.to_be_bytes();
    let manifest = ctx.manifest.to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![
        ctx.record_id,
        &epoch,
        ctx.collection.as_bytes(),
        &version,
        &manifest,
    ];
    // Only for a honeytoken: every other record's AAD stays what it was, so no key is rewrapped.
    if ctx.honeytoken {
        parts.push(WRAP_AAD_HONEYTOKEN);
    }
    aad(WRAP_AAD_DOMAIN, &parts)
}

/// Wraps a DEK under `epoch` of the key provider, bound to `ctx`.
///
/// # Errors
/// `KeyError` if the provider cannot seal under that epoch.
pub fn wrap_dek(
    keys: &dyn KeyProvider,
    epoch: EpochId,
    dek: &Dek,
    ctx: &DekContext<'_>,
) -> Result<WrappedDek, KeyError> {
    let mut plain = Zeroizing::new([0u8; 48]);
    plain[..16].copy_from_slice(&dek.id().0);
    plain[16..].copy_from_slice(dek.bytes());
    keys.seal(epoch, plain.as_ref(), &wrap_aad(epoch, ctx))
        .map(WrappedDek)
}

/// Unwraps a DEK wrapped under `epoch`.
///
/// # Errors
/// `KeyError::Decrypt` if the wrapped key was altered, is malformed, or was wrapped under
/// another epoch or for another record, collection, version, manifest or honeytoken flag;
/// `KeyError::UnknownEpoch` if its epoch was destroyed.
pub fn unwrap_dek(
    keys: &dyn KeyProvider,
    epoch: EpochId,
    wrapped: &WrappedDek,
    ctx: &DekContext<'_>,
) -> Result<Dek, KeyError> {
    let plain = keys.open(epoch, &wrapped.0, &wrap_aad(epoch, ctx))?;
    if plain.len() != 48 {
        return Err(KeyError::Decrypt);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&plain[..16]);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain[16..]);
    Ok(Dek::from_parts(DekId(id), key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx<'a>(id: &'a [u8; 16], field: &'a str, version: u64) -> FieldContext<'a> {
        FieldContext {
            collection: "customers",
            record_id: id,
            field,
            record_version: version,
        }
    }

    #[test]
    fn known_answer_xchacha20poly1305() {
        // draft-irtf-cfrg-xchacha-03, appendix A.3.1.
        let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce: [u8; 24] = std::array::from_fn(|i| 0x40 + i as u8);
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap_or_default();
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let cipher = XChaCha20Poly1305::new((&key).into());
        let out = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        assert_eq!(hex::encode(&out[..16]), "bd6d179d3e83d43b9576579493c0e939");
        assert_eq!(
            hex::encode(&out[out.len() - 16..]),
            "c0875924c1c7987947deafd8780acf49"
        );
    }

    #[test]
    fn field_round_trip_and_binding() {
        let dek = Dek::generate();
        let id = [7u8; 16];
        let other = [8u8; 16];
        let sealed = seal_field(&dek, &ctx(&id, "email", 1), "ada@example.com");
        let opened = open_field(&dek, &ctx(&id, "email", 1), &sealed).map(|v| v.to_string());
        assert_eq!(opened.as_deref(), Ok("ada@example.com"));
        assert!(open_field(&dek, &ctx(&other, "email", 1), &sealed).is_err());
        assert!(open_field(&dek, &ctx(&id, "name", 1), &sealed).is_err());
        assert!(open_field(&dek, &ctx(&id, "email", 2), &sealed).is_err());
        assert!(open_field(&Dek::generate(), &ctx(&id, "email", 1), &sealed).is_err());
        let mut other_collection = ctx(&id, "email", 1);
        other_collection.collection = "vendors";
        assert!(open_field(&dek, &other_collection, &sealed).is_err());
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert!(
                open_field(&dek, &ctx(&id, "email", 1), &flipped).is_err(),
                "byte {i}"
            );
        }
        let mut unknown_version = sealed.clone();
        unknown_version[0] = 0x02;
        assert!(open_field(&dek, &ctx(&id, "email", 1), &unknown_version).is_err());
        assert!(open_field(&dek, &ctx(&id, "email", 1), &sealed[..10]).is_err());
    }

    fn keyring() -> (tempfile::TempDir, crate::crypto::Keyring) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ring = crate::crypto::Keyring::open_file(dir.path().join("keyring"))
            .unwrap_or_else(|e| panic!("{e}"));
        (dir, ring)
    }

    #[test]
    fn wrapped_dek_is_bound_to_record_epoch_version_and_manifest() {
        let (_dir, ring) = keyring();
        let dek = Dek::generate();
        let id = [1u8; 16];
        let other = [2u8; 16];
        let ctx = DekContext {
            record_id: &id,
            collection: "customers",
            record_version: 3,
            manifest: 0b101,
            honeytoken: false,
        };
        let one = EpochId(1);
        let wrapped = wrap_dek(&ring, one, &dek, &ctx).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            unwrap_dek(&ring, one, &wrapped, &ctx).map(|d| d.id()),
            Ok(dek.id())
        );
        for bad in [
            DekContext {
                record_id: &other,
                ..ctx
            },
            DekContext {
                record_version: 2,
                ..ctx
            },
            DekContext {
                collection: "vendors",
                ..ctx
            },
            DekContext {
                manifest: 0b100,
                ..ctx
            },
        ] {
            assert!(unwrap_dek(&ring, one, &wrapped, &bad).is_err(), "{bad:?}");
        }
        let (_other_dir, other_ring) = keyring();
        assert!(unwrap_dek(&other_ring, one, &wrapped, &ctx).is_err());
        let two = ring.add_epoch().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            unwrap_dek(&ring, two, &wrapped, &ctx).err(),
            Some(KeyError::Decrypt)
        );
    }

    #[test]
    fn wrapped_dek_is_bound_to_the_honeytoken_flag_and_other_aads_are_unchanged() {
        let (_dir, ring) = keyring();
        let id = [1u8; 16];
        let record = DekContext {
            record_id: &id,
            collection: "customers",
            record_version: 3,
            manifest: 0b101,
            honeytoken: false,
        };
        let decoy = DekContext {
            honeytoken: true,
            ..record
        };
        let one = EpochId(1);
        for (wrapped_for, cleared_or_set) in [(decoy, record), (record, decoy)] {
            let dek = Dek::generate();
            let wrapped =
                wrap_dek(&ring, one, &dek, &wrapped_for).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                unwrap_dek(&ring, one, &wrapped, &wrapped_for).map(|d| d.id()),
                Ok(dek.id())
            );
            assert_eq!(
                unwrap_dek(&ring, one, &wrapped, &cleared_or_set).err(),
                Some(KeyError::Decrypt),
                "{wrapped_for:?} opened as {cleared_or_set:?}"
            );
        }
        // A record's AAD is byte for byte the one from before the flag existed (computed by the
        // code of then): its stored keys unwrap without a migration.
        assert_eq!(
            hex::encode(wrap_aad(one, &record)),
            "7374726f6e67726f6f6d2f64656b2f7632\
             0000001001010101010101010101010101010101\
             0000000400000001\
             00000009637573746f6d657273\
             000000080000000000000003\
             000000080000000000000005"
        );
        // A honeytoken's is that with one more length-prefixed part.
        let mut expected = wrap_aad(one, &record);
        expected.extend_from_slice(&10u32.to_be_bytes());
        expected.extend_from_slice(b"honeytoken");
        assert_eq!(wrap_aad(one, &decoy), expected);
    }

    /// Field envelopes of random values under one DEK, and the context they were sealed in.
    fn sealed_fields(dek: &std::sync::Arc<Dek>) -> impl Strategy<Value = Vec<u8>> + Clone + use<> {
        let dek = std::sync::Arc::clone(dek);
        "\\PC{0,64}".prop_map(move |v| seal_field(&dek, &ctx(&[3; 16], "notes", 9), &v))
    }

    #[test]
    fn fuzz_field_envelope() {
        let dek = std::sync::Arc::new(Dek::generate());
        let strategy = crate::testing::inputs(sealed_fields(&dek), &[]);
        crate::testing::fuzz("field envelope", 256, strategy, |input| {
            // Only an unaltered envelope opens: every mutation is caught by the tag.
            let opened = open_field(&dek, &ctx(&[3; 16], "notes", 9), &input.bytes).is_ok();
            prop_assert_eq!(opened, input.unaltered());
            Ok(())
        });
    }

    #[test]
    fn fuzz_wrapped_dek() {
        let (_dir, ring) = keyring();
        let ring = std::sync::Arc::new(ring);
        let ctx = DekContext {
            record_id: &[5u8; 16],
            collection: "customers",
            record_version: 4,
            manifest: 0b1011,
            honeytoken: false,
        };
        let wrapping = std::sync::Arc::clone(&ring);
        let valid = any::<u8>().prop_map(move |_| {
            wrap_dek(wrapping.as_ref(), EpochId(1), &Dek::generate(), &ctx)
                .map(|w| w.0)
                .unwrap_or_default()
        });
        let strategy = crate::testing::inputs(valid, &[]);
        crate::testing::fuzz("wrapped DEK", 256, strategy, |input| {
            let wrapped = WrappedDek(input.bytes.clone());
            let opened = unwrap_dek(ring.as_ref(), EpochId(1), &wrapped, &ctx).is_ok();
            prop_assert_eq!(opened, input.unaltered());
            Ok(())
        });
    }

    proptest! {
        #[test]
        fn any_value_round_trips(value in "\\PC{0,200}", version in 1u64..u64::MAX) {
            let dek = Dek::generate();
            let id = [3u8; 16];
            let sealed = seal_field(&dek, &ctx(&id, "notes", version), &value);
            let opened = open_field(&dek, &ctx(&id, "notes", version), &sealed).map(|v| v.to_string());
            prop_assert_eq!(opened, Ok(value));
        }

        #[test]
        fn garbage_never_opens(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let dek = Dek::generate();
            prop_assert!(open_field(&dek, &ctx(&[0; 16], "notes", 1), &bytes).is_err());
        }
    }
}
