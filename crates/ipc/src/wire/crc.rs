//! CRC-32 (IEEE, as zlib's `crc32`) tuned for the hub's frames: tens to a few hundred bytes.
//!
//! `crc32fast` is fast on long inputs, but below 128 bytes it works through a table, and the
//! last bytes of each input one at a time, each waiting for the one before. A 64-byte
//! message makes a frame of about a hundred bytes, so that chain was most of a frame's
//! checksum. Here inputs of 16 bytes or more are folded 16 bytes at a time with carry-less
//! multiplication (PCLMULQDQ), the method of Intel's "Fast CRC Computation for Generic
//! Polynomials Using PCLMULQDQ Instruction", bit-reflected as CRC-32 is; the last partial
//! block is folded the same way rather than byte by byte. A frame's checksum is then a short
//! run of independent instructions, and those of consecutive frames overlap in the CPU.
//!
//! Shorter and longer inputs (where `crc32fast` folds four blocks at a time), and CPUs
//! without the instructions, use `crc32fast`.

/// The CRC-32 of `data` continued from `crc` (the checksum of what came before, 0 for
/// nothing), as `crc32fast::Hasher::new_with_initial(crc)` would compute it.
#[inline]
pub fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if (16..128).contains(&data.len()) && folding::available() {
            // SAFETY: the CPU has the instructions `fold` is compiled for (checked just now).
            return !unsafe { folding::fold(!crc, data) };
        }
    }
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(data);
    hasher.finalize()
}

#[cfg(target_arch = "x86_64")]
mod folding {
    //! The folding itself. Polynomials are bit-reflected: the first byte of the data is the
    //! low byte of a register and holds the highest powers of x.

    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_clmulepi64_si128, _mm_cvtsi32_si128, _mm_extract_epi32,
        _mm_loadu_si128, _mm_or_si128, _mm_set_epi64x, _mm_setr_epi32, _mm_shuffle_epi8,
        _mm_srli_si128, _mm_xor_si128,
    };

    /// `x^n mod P` for the CRC-32 polynomial P, bit-reflected and shifted left by one: the
    /// form in which a reflected carry-less product comes out aligned. Tests derive them.
    pub(super) const X160: i64 = 0x1_7519_97d0;
    pub(super) const X96: i64 = 0x0_ccaa_009e;
    pub(super) const X64: i64 = 0x1_63cd_6124;
    /// P itself, bit-reflected (33 bits).
    pub(super) const POLY: i64 = 0x1_db71_0641;
    /// `floor(x^64 / P)`, bit-reflected (33 bits): Barrett reduction's multiplier.
    pub(super) const MU: i64 = 0x1_f701_1641;

    /// Shuffle masks, read 16 bytes from offset `r`: `0x80` makes a zero byte.
    /// From `TAIL_SHIFT`: the last `r` bytes of a block are its first `r`, zeros before.
    /// From `HEAD_SHIFT`: a block without its first `r` bytes, zeros after.
    /// From `KEEP_LAST`: a mask keeping a block's last `r` bytes.
    static TAIL_SHIFT: [u8; 32] = {
        let mut t = [0x80; 32];
        let mut i = 0;
        while i < 16 {
            t[16 + i] = i as u8;
            i += 1;
        }
        t
    };
    static HEAD_SHIFT: [u8; 32] = {
        let mut t = [0x80; 32];
        let mut i = 0;
        while i < 16 {
            t[i] = i as u8;
            i += 1;
        }
        t
    };
    static KEEP_LAST: [u8; 32] = {
        let mut t = [0; 32];
        let mut i = 16;
        while i < 32 {
            t[i] = 0xff;
            i += 1;
        }
        t
    };

    /// Whether this CPU can run [`fold`]; the answer is cached by `std`.
    #[inline]
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// `(block.low × x^160) ⊕ (block.high × x^96)`: the block's share moved 128 bits on,
    /// to be added to the block that follows it.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2")]
    unsafe fn carry(block: __m128i, k160_96: __m128i) -> __m128i {
        _mm_xor_si128(
            _mm_clmulepi64_si128(block, k160_96, 0x00),
            _mm_clmulepi64_si128(block, k160_96, 0x11),
        )
    }

    /// The CRC register (inverted, as the algorithm keeps it) after `data`, starting from
    /// `register`. `data` holds at least 16 bytes.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ and SSE4.1 ([`available`]).
    #[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn fold(register: u32, data: &[u8]) -> u32 {
        debug_assert!(data.len() >= 16);
        let load = |at: usize| _mm_loadu_si128(data.as_ptr().add(at).cast::<__m128i>());
        let k160_96 = _mm_set_epi64x(X96, X160);

        // Starting from a register is the same as adding it to the first four bytes.
        let mut acc = _mm_xor_si128(load(0), _mm_cvtsi32_si128(register as i32));
        let whole = data.len() / 16 * 16;
        let mut at = 16;
        while at < whole {
            acc = _mm_xor_si128(carry(acc, k160_96), load(at));
            at += 16;
        }

        // The last `r` bytes: `acc` followed by them is the same polynomial as the block
        // `zeros ++ acc[..r]` followed by the block `acc[r..] ++ last r bytes`.
        let r = data.len() - whole;
        if r > 0 {
            let mask = |table: &[u8; 32]| _mm_loadu_si128(table.as_ptr().add(r).cast());
            let high = _mm_shuffle_epi8(acc, mask(&TAIL_SHIFT));
            let low = _mm_or_si128(
                _mm_shuffle_epi8(acc, mask(&HEAD_SHIFT)),
                _mm_and_si128(load(data.len() - 16), mask(&KEEP_LAST)),
            );
            acc = _mm_xor_si128(carry(high, k160_96), low);
        }

        // 128 bits to 64: the low half moved on by 64 bits (× x^96, as it sits 32 bits
        // into a 96-bit window) onto the high half.
        let low32 = _mm_setr_epi32(-1, 0, -1, 0);
        acc = _mm_xor_si128(
            _mm_srli_si128(acc, 8),
            _mm_clmulepi64_si128(acc, k160_96, 0x10),
        );
        // 96 bits to 64: the low 32 bits × x^64 onto the rest.
        acc = _mm_xor_si128(
            _mm_srli_si128(acc, 4),
            _mm_clmulepi64_si128(_mm_and_si128(acc, low32), _mm_set_epi64x(0, X64), 0x00),
        );
        // Barrett: 64 bits to the 32-bit remainder.
        let poly_mu = _mm_set_epi64x(MU, POLY);
        let quotient = _mm_and_si128(
            _mm_clmulepi64_si128(_mm_and_si128(acc, low32), poly_mu, 0x10),
            low32,
        );
        acc = _mm_xor_si128(acc, _mm_clmulepi64_si128(quotient, poly_mu, 0x00));
        _mm_extract_epi32(acc, 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::update;
    use proptest::prelude::*;

    fn reference(crc: u32, data: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new_with_initial(crc);
        hasher.update(data);
        hasher.finalize()
    }

    #[test]
    fn matches_zlib_crc32_on_known_input() {
        assert_eq!(update(0, b"123456789"), 0xcbf4_3926);
        assert_eq!(
            update(0, b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
    }

    #[test]
    fn every_length_and_alignment_up_to_300_matches_the_reference() {
        let bytes: Vec<u8> = (0..400u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..16 {
            for len in 0..300 {
                let data = &bytes[start..start + len];
                for crc in [0, 0xffff_ffff, 0x1234_5678] {
                    assert_eq!(
                        update(crc, data),
                        reference(crc, data),
                        "len {len} at {start}"
                    );
                }
            }
        }
    }

    #[test]
    fn continuing_from_a_checksum_is_the_checksum_of_both() {
        let data: Vec<u8> = (0..200u8).collect();
        let (a, b) = data.split_at(37);
        assert_eq!(update(update(0, a), b), update(0, &data));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_folding_constants_follow_from_the_polynomial() {
        use super::folding::{MU, POLY, X160, X64, X96};
        const P: u64 = 0x1_04c1_1db7;
        fn reflect(value: u64, bits: u32) -> u64 {
            value.reverse_bits() >> (64 - bits)
        }
        // x^n mod P, then reflected and shifted as the folding uses it.
        fn x_to_mod_p(n: u32) -> i64 {
            let mut r: u64 = 1;
            for _ in 0..n {
                r <<= 1;
                if r & (1 << 32) != 0 {
                    r ^= P;
                }
            }
            (reflect(r, 32) << 1) as i64
        }
        assert_eq!(x_to_mod_p(160), X160);
        assert_eq!(x_to_mod_p(96), X96);
        assert_eq!(x_to_mod_p(64), X64);
        assert_eq!(reflect(P, 33) as i64, POLY);
        // floor(x^64 / P) by long division over GF(2).
        let (mut rest, mut quotient) = (1u128 << 64, 0u128);
        while 128 - rest.leading_zeros() >= 33 {
            let shift = 128 - rest.leading_zeros() - 33;
            quotient |= 1 << shift;
            rest ^= (P as u128) << shift;
        }
        assert_eq!(reflect(quotient as u64, 33) as i64, MU);
    }

    proptest! {
        #[test]
        fn random_input_matches_the_reference(
            crc in any::<u32>(),
            data in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            prop_assert_eq!(update(crc, &data), reference(crc, &data));
        }
    }
}
