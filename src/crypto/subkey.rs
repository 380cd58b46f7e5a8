//! Keys derived from the master key for purposes other than wrapping DEKs (the audit chain,
//! checkpoint signatures), and the keyed MAC they compute. A derived key is useless to anyone
//! without the master key, so only the vault can extend or sign the audit chain.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::Kek;

type HmacSha256 = Hmac<Sha256>;

/// A 256-bit key derived from the KEK for one labelled purpose.
pub struct SubKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for SubKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubKey(<redacted>)")
    }
}

fn mac_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length (longer ones are hashed): `new_from_slice` cannot fail.
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl SubKey {
    /// Derives the subkey for `label` (HMAC-SHA256 of the label under the KEK, with the KEK id).
    pub fn derive(kek: &Kek, label: &str) -> Self {
        Self(Zeroizing::new(mac_parts(
            kek.bytes(),
            &[
                b"strongroom/subkey/v1",
                label.as_bytes(),
                &kek.id().0.to_be_bytes(),
            ],
        )))
    }

    /// HMAC-SHA256 under this key over length-prefixed `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        mac_parts(self.0.as_ref(), parts)
    }

    /// Checks a MAC in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.mac(parts).as_slice().ct_eq(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KekId;

    #[test]
    fn labels_and_keks_give_different_keys() {
        let kek = Kek::new(KekId(1), Zeroizing::new([7; 32]));
        let a = SubKey::derive(&kek, "audit-chain");
        let b = SubKey::derive(&kek, "audit-checkpoint");
        let other = SubKey::derive(&Kek::new(KekId(1), Zeroizing::new([8; 32])), "audit-chain");
        let parts: [&[u8]; 2] = [b"x", b"y"];
        assert_ne!(a.mac(&parts), b.mac(&parts));
        assert_ne!(a.mac(&parts), other.mac(&parts));
        assert!(a.verify(&parts, &a.mac(&parts)));
        assert!(!a.verify(&parts, &b.mac(&parts)));
        // Length prefixes: moving a byte between parts changes the MAC.
        assert_ne!(a.mac(&[b"xy", b""]), a.mac(&[b"x", b"y"]));
        assert!(!format!("{a:?}").contains('7'));
    }
}
