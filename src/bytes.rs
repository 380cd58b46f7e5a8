//! Reading the vault's own binary encodings (audit events and frames, the consent ledger,
//! stored batch results): one cursor whose every read is checked. Each format keeps its own
//! rules (length prefixes, counts) next to its encoder, on top of this.

/// A cursor over bytes: each read takes from the front; `None` when too few bytes are left.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.0.len()
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    /// The next `N` bytes, as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// The next byte.
    pub fn byte(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_be_bytes)
    }

    /// An unsigned LEB128 varint of at most 64 bits.
    pub fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// The next `n` bytes, which must be UTF-8.
    pub fn utf8(&mut self, n: usize) -> Option<String> {
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_and_varints_at_64_bits() {
        let mut r = Reader::new(&[0, 1, 0xff, 0xff, 0x96, 0x01, b'h', b'i']);
        assert_eq!(r.u16(), Some(1));
        assert_eq!(r.take(2), Some(&[0xff, 0xff][..]));
        assert_eq!(r.varint(), Some(150));
        assert_eq!(r.remaining(), 2);
        assert_eq!(r.u32(), None, "too few bytes left");
        assert_eq!(r.utf8(2).as_deref(), Some("hi"));
        assert!(r.is_empty());
        assert_eq!(r.byte(), None);
        assert_eq!(
            Reader::new(&[0xff; 11]).varint(),
            None,
            "longer than 64 bits"
        );
        assert_eq!(Reader::new(&[0xc3, 0x28]).utf8(2), None, "not UTF-8");
    }
}
