//! CRC-32 (IEEE, as zlib's `crc32`) tuned for the hub's frames: tens to a few hundred bytes.
//!
//! `crc32fast` is fast on long inputs, but below 128 bytes it works through a table, and the
//! last bytes of each input one at a time, each waiting for the one before. A 64-byte
//! message makes a frame of about a hundred bytes, so that chain was most of a frame's
//! checksum. Here inputs of 16 bytes or more are folded 16 bytes at a time with carry-less
//! multiplication (PCLMULQDQ), the method of Intel's "Fast CRC Computation for Generic
//! Polynomials Using PCLMULQDQ Instruction", bit-reflected as CRC-32 is; the last partial
//! block is folded the same way rather than byte by byte.
//!
//! A frame's checksum covers its first eight bytes and then everything after the checksum
//! field. [`frame`] folds that as one message, its first block put together from both sides
//! of the gap, so a frame costs one short fold and no separate pass over its header. Where
//! the CPU has AVX-512 and VPCLMULQDQ, [`FrameSums::four`] folds four frames at once, one in each
//! 128-bit lane of a register: the sender seals, and the hub checks, frames four at a time.
//!
//! Shorter and longer inputs (where `crc32fast` folds four blocks at a time), and CPUs
//! without the instructions, use `crc32fast`.

/// The CRC-32 of `data` continued from `crc` (the checksum of what came before, 0 for
/// nothing), as `crc32fast::Hasher::new_with_initial(crc)` would compute it.
#[inline]
pub fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if (16..=folding::MAX_MESSAGE).contains(&data.len()) && folding::available() {
            // SAFETY: the CPU has the instructions `fold` is compiled for (checked just now).
            return !unsafe { folding::fold(!crc, data) };
        }
    }
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(data);
    hasher.finalize()
}

/// Bytes of a frame before its checksum field, and where the field ends.
const HEAD: usize = 8;
const HEADER: usize = 12;

/// The checksum of a whole frame: the CRC-32 of `frame[..8]` followed by `frame[12..]`
/// (the checksum field itself is not read). Bytes too few for a header are checksummed as
/// they are.
#[inline]
pub fn frame(frame: &[u8]) -> u32 {
    FrameSums::new().one(frame)
}

/// Frame checksums by the best means this CPU has, looked up once: for code that checksums
/// many frames in a row (the lookup is a few loads and tests, but per frame it shows).
#[derive(Debug, Clone, Copy)]
pub struct FrameSums {
    /// PCLMULQDQ folding, one frame at a time.
    folding: bool,
    /// AVX-512 VPCLMULQDQ folding, four frames at a time.
    wide: bool,
}

impl Default for FrameSums {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameSums {
    /// What this CPU can do.
    #[inline]
    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        let (folding, wide) = {
            let folding = folding::available();
            (folding, folding && folding::wide_available())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (folding, wide) = (false, false);
        FrameSums { folding, wide }
    }

    /// The checksum of one frame; see [`frame`].
    #[inline]
    pub fn one(self, frame: &[u8]) -> u32 {
        if frame.len() < HEADER {
            return update(0, frame);
        }
        #[cfg(target_arch = "x86_64")]
        {
            if self.folding && folding::frame_fits(frame) {
                // SAFETY: the CPU has the instructions `fold_frame` is compiled for (`new`
                // checked), and `frame_fits` checked the length it needs.
                return !unsafe { folding::fold_frame(frame) };
            }
        }
        update(update(0, &frame[..HEAD]), &frame[HEADER..])
    }

    /// The checksums of four frames, as [`frame`] computes each.
    #[inline]
    pub fn four(self, frames: &[&[u8]; 4]) -> [u32; 4] {
        #[cfg(target_arch = "x86_64")]
        {
            if self.wide && folding::wide_fits(frames) {
                // SAFETY: the CPU has the instructions `fold_frames4` is compiled for (`new`
                // checked), and `wide_fits` checked the lengths it needs.
                return unsafe { folding::fold_frames4(frames) };
            }
        }
        [
            self.one(frames[0]),
            self.one(frames[1]),
            self.one(frames[2]),
            self.one(frames[3]),
        ]
    }
}

#[cfg(target_arch = "x86_64")]
mod folding {
    //! The folding itself. Polynomials are bit-reflected: the first byte of the data is the
    //! low byte of a register and holds the highest powers of x.
    //!
    //! A message is folded as: its first 16 bytes plus the register, then each following
    //! whole block, then the last partial block, then the reduction from 128 bits to the
    //! 32-bit register. A frame is the message `frame[..8] ++ frame[12..]`: its first block
    //! is put together from both sides of the checksum field, and its message offset `o`
    //! (from 8 on) is frame offset `o + 4`.

    use std::arch::x86_64::{
        __m128i, __m512i, _mm512_and_si512, _mm512_broadcast_i32x4, _mm512_bsrli_epi128,
        _mm512_castsi128_si512, _mm512_castsi512_si128, _mm512_clmulepi64_epi128,
        _mm512_extracti32x4_epi32, _mm512_inserti32x4, _mm512_shuffle_epi8,
        _mm512_ternarylogic_epi64, _mm512_xor_si512, _mm_and_si128, _mm_clmulepi64_si128,
        _mm_cvtsi32_si128, _mm_extract_epi32, _mm_loadl_epi64, _mm_loadu_si128, _mm_or_si128,
        _mm_set_epi64x, _mm_setr_epi32, _mm_shuffle_epi8, _mm_srli_si128, _mm_unpacklo_epi64,
        _mm_xor_si128,
    };

    /// The longest message folded here; longer ones go to `crc32fast`'s wider folding.
    pub(super) const MAX_MESSAGE: usize = 128;

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
    /// With `r` = 0 they make the last-block step change nothing.
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

    /// Whether this CPU can run [`fold`] and [`fold_frame`]; the answer is cached by `std`.
    #[inline]
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// Whether this CPU can run [`fold_frames4`].
    #[inline]
    pub(super) fn wide_available() -> bool {
        std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512f")
    }

    /// Whether [`fold_frame`] takes `frame`: its message is 28 to [`MAX_MESSAGE`] bytes
    /// (a frame of at least 32), so its first block and its last 16 bytes lie clear of the
    /// checksum field.
    #[inline]
    pub(super) fn frame_fits(frame: &[u8]) -> bool {
        (32..=MAX_MESSAGE + 4).contains(&frame.len())
    }

    /// Whether [`fold_frames4`] takes `frames`: each fits [`fold_frame`], and all have as
    /// many whole blocks, so that their lanes fold in step.
    #[inline]
    pub(super) fn wide_fits(frames: &[&[u8]; 4]) -> bool {
        let blocks = |f: &[u8]| (f.len() - 4) / 16;
        frames.iter().all(|f| frame_fits(f))
            && frames.iter().all(|f| blocks(f) == blocks(frames[0]))
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

    #[inline]
    #[target_feature(enable = "sse2")]
    unsafe fn load(at: *const u8) -> __m128i {
        _mm_loadu_si128(at.cast::<__m128i>())
    }

    /// The register after a message of `len` bytes (at least 16) whose first block plus the
    /// starting register is `acc`; `block(o)` loads the 16 message bytes at offset `o`.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
    unsafe fn fold_message(
        mut acc: __m128i,
        len: usize,
        block: impl Fn(usize) -> *const u8,
    ) -> u32 {
        let k160_96 = _mm_set_epi64x(X96, X160);
        let whole = len / 16 * 16;
        let mut at = 16;
        while at < whole {
            acc = _mm_xor_si128(carry(acc, k160_96), load(block(at)));
            at += 16;
        }

        // The last `r` bytes: `acc` followed by them is the same polynomial as the block
        // `zeros ++ acc[..r]` followed by the block `acc[r..] ++ last r bytes`.
        let r = len - whole;
        if r > 0 {
            let mask = |table: &[u8; 32]| load(table.as_ptr().add(r));
            let high = _mm_shuffle_epi8(acc, mask(&TAIL_SHIFT));
            let low = _mm_or_si128(
                _mm_shuffle_epi8(acc, mask(&HEAD_SHIFT)),
                _mm_and_si128(load(block(len - 16)), mask(&KEEP_LAST)),
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

    /// The CRC register (inverted, as the algorithm keeps it) after `data`, starting from
    /// `register`. `data` holds 16 to [`MAX_MESSAGE`] bytes.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ and SSE4.1 ([`available`]).
    #[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn fold(register: u32, data: &[u8]) -> u32 {
        debug_assert!((16..=MAX_MESSAGE).contains(&data.len()));
        let at = data.as_ptr();
        // Starting from a register is the same as adding it to the first four bytes.
        let acc = _mm_xor_si128(load(at), _mm_cvtsi32_si128(register as i32));
        fold_message(acc, data.len(), |o| at.add(o))
    }

    /// The first block of `frame`'s message plus the starting register.
    #[inline]
    #[target_feature(enable = "sse2")]
    unsafe fn first_block(frame: *const u8) -> __m128i {
        let block = _mm_unpacklo_epi64(
            _mm_loadl_epi64(frame.cast()),
            _mm_loadl_epi64(frame.add(12).cast()),
        );
        _mm_xor_si128(block, _mm_cvtsi32_si128(-1))
    }

    /// The inverted CRC register after `frame`'s message, from a fresh start.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ and SSE4.1 ([`available`]); `frame` must fit
    /// ([`frame_fits`]).
    #[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn fold_frame(frame: &[u8]) -> u32 {
        debug_assert!(frame_fits(frame));
        let at = frame.as_ptr();
        fold_message(first_block(at), frame.len() - 4, |o| at.add(o + 4))
    }

    /// Four 16-byte loads, one per lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes(at: [*const u8; 4]) -> __m512i {
        let v = _mm512_castsi128_si512(load(at[0]));
        let v = _mm512_inserti32x4::<1>(v, load(at[1]));
        let v = _mm512_inserti32x4::<2>(v, load(at[2]));
        _mm512_inserti32x4::<3>(v, load(at[3]))
    }

    /// The checksums of four frames at once, one per 128-bit lane: the steps of
    /// [`fold_frame`] on 512-bit registers. (Frames and checksums go in and out one scalar
    /// at a time: a vector read of values just written as scalars would wait for them.)
    ///
    /// # Safety
    /// The CPU must have AVX-512 (F, BW) and VPCLMULQDQ ([`wide_available`]); the frames
    /// must fit ([`wide_fits`]).
    #[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,pclmulqdq,sse4.1")]
    pub(super) unsafe fn fold_frames4(frames: &[&[u8]; 4]) -> [u32; 4] {
        debug_assert!(wide_fits(frames));
        let at = [0, 1, 2, 3].map(|i| frames[i].as_ptr());
        let len = [0, 1, 2, 3].map(|i| frames[i].len() - 4);
        let k160_96 = _mm512_broadcast_i32x4(_mm_set_epi64x(X96, X160));
        let xor3 = |a, b, c| _mm512_ternarylogic_epi64::<0x96>(a, b, c);
        let carry_onto = |acc, onto| {
            xor3(
                _mm512_clmulepi64_epi128::<0x00>(acc, k160_96),
                _mm512_clmulepi64_epi128::<0x11>(acc, k160_96),
                onto,
            )
        };

        let firsts = at.map(|f| first_block(f));
        let mut acc = _mm512_castsi128_si512(firsts[0]);
        acc = _mm512_inserti32x4::<1>(acc, firsts[1]);
        acc = _mm512_inserti32x4::<2>(acc, firsts[2]);
        acc = _mm512_inserti32x4::<3>(acc, firsts[3]);
        let whole = len[0] / 16 * 16;
        let mut o = 16;
        while o < whole {
            acc = carry_onto(acc, lanes(at.map(|f| f.add(o + 4))));
            o += 16;
        }

        // Each lane's last partial block, as in `fold_message`; a lane without one (r = 0)
        // gets masks that leave it as it is.
        let r = len.map(|l| l - whole);
        let mask = |table: &'static [u8; 32]| lanes(r.map(|r| table.as_ptr().add(r)));
        let last = lanes([0, 1, 2, 3].map(|i| at[i].add(len[i] - 16 + 4)));
        let high = _mm512_shuffle_epi8(acc, mask(&TAIL_SHIFT));
        // (acc shuffled) | (last & keep)
        let low = _mm512_ternarylogic_epi64::<0xf8>(
            _mm512_shuffle_epi8(acc, mask(&HEAD_SHIFT)),
            last,
            mask(&KEEP_LAST),
        );
        acc = carry_onto(high, low);

        let low32 = _mm512_broadcast_i32x4(_mm_setr_epi32(-1, 0, -1, 0));
        acc = _mm512_xor_si512(
            _mm512_bsrli_epi128::<8>(acc),
            _mm512_clmulepi64_epi128::<0x10>(acc, k160_96),
        );
        let x64 = _mm512_broadcast_i32x4(_mm_set_epi64x(0, X64));
        acc = _mm512_xor_si512(
            _mm512_bsrli_epi128::<4>(acc),
            _mm512_clmulepi64_epi128::<0x00>(_mm512_and_si512(acc, low32), x64),
        );
        let poly_mu = _mm512_broadcast_i32x4(_mm_set_epi64x(MU, POLY));
        let quotient = _mm512_and_si512(
            _mm512_clmulepi64_epi128::<0x10>(_mm512_and_si512(acc, low32), poly_mu),
            low32,
        );
        // The register, inverted: the checksum. (0xc3: not (a xor b), c unused.)
        acc = _mm512_ternarylogic_epi64::<0xc3>(
            acc,
            _mm512_clmulepi64_epi128::<0x00>(quotient, poly_mu),
            acc,
        );
        let lane = |v: __m128i| _mm_extract_epi32::<1>(v) as u32;
        [
            lane(_mm512_castsi512_si128(acc)),
            lane(_mm512_extracti32x4_epi32::<1>(acc)),
            lane(_mm512_extracti32x4_epi32::<2>(acc)),
            lane(_mm512_extracti32x4_epi32::<3>(acc)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::{frame, update, FrameSums};

    fn frames4(frames: &[&[u8]; 4]) -> [u32; 4] {
        FrameSums::new().four(frames)
    }
    use proptest::prelude::*;

    fn reference(crc: u32, data: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new_with_initial(crc);
        hasher.update(data);
        hasher.finalize()
    }

    /// A frame's checksum as the protocol defines it: bytes 0..8, then 12 on.
    fn frame_reference(f: &[u8]) -> u32 {
        if f.len() < 12 {
            return reference(0, f);
        }
        reference(reference(0, &f[..8]), &f[12..])
    }

    fn noise(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn a_frame_of_every_length_and_alignment_up_to_300_matches_the_reference() {
        let bytes = noise(400);
        for start in 0..16 {
            for len in 0..300 {
                let f = &bytes[start..start + len];
                assert_eq!(frame(f), frame_reference(f), "len {len} at {start}");
            }
        }
    }

    #[test]
    fn four_frames_at_once_match_one_at_a_time() {
        let bytes = noise(2000);
        // Lengths in step (as many whole blocks) and not, short, long and in between.
        for a in [
            0, 11, 12, 31, 32, 33, 47, 48, 60, 96, 106, 131, 132, 133, 200,
        ] {
            for b in [32, 40, 44, 45, 59, 60, 96, 100, 111, 132, 300] {
                let frames = [
                    &bytes[1..1 + a],
                    &bytes[400..400 + b],
                    &bytes[800..800 + a.max(b)],
                    &bytes[1203..1203 + a],
                ];
                let want = frames.map(frame_reference);
                assert_eq!(frames4(&frames), want, "lengths {a} and {b}");
            }
        }
    }

    #[test]
    fn every_means_gives_the_same_checksums() {
        // What a CPU without AVX-512, or without PCLMULQDQ, would use; forced here, on
        // whatever CPU runs the test, as far as it has the instructions.
        let best = FrameSums::new();
        let means = [
            best,
            FrameSums {
                wide: false,
                ..best
            },
            FrameSums {
                folding: false,
                wide: false,
            },
        ];
        let bytes = noise(1500);
        for len in [0, 5, 12, 31, 32, 47, 96, 106, 132, 133, 400] {
            let frames = [
                &bytes[0..len],
                &bytes[401..401 + len],
                &bytes[802..802 + len],
                &bytes[1100..1100 + len],
            ];
            let want = frames.map(frame_reference);
            for sums in means {
                assert_eq!(sums.four(&frames), want, "{sums:?}, length {len}");
                assert_eq!(sums.one(frames[1]), want[1], "{sums:?}, length {len}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_four_lane_fold_matches_where_the_cpu_has_it() {
        use super::folding::{fold_frames4, wide_available, wide_fits};
        if !wide_available() {
            eprintln!("no AVX-512 VPCLMULQDQ here: the four-lane fold is not run");
            return;
        }
        let bytes = noise(1000);
        for len in 32..=132 {
            // Same whole blocks, different last partial blocks where the length allows.
            let base = (len - 4) / 16 * 16 + 4;
            let frames = [
                &bytes[0..len],
                &bytes[200..200 + base.max(32)],
                &bytes[401..401 + len],
                &bytes[700..700 + (base + 15).min(132)],
            ];
            if !wide_fits(&frames) {
                continue;
            }
            // SAFETY: the CPU has the instructions and the frames fit (checked above).
            let got = unsafe { fold_frames4(&frames) };
            assert_eq!(got, frames.map(frame_reference), "len {len}");
        }
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

        #[test]
        fn random_frames_four_at_a_time_match_the_reference(
            frames in proptest::array::uniform4(proptest::collection::vec(any::<u8>(), 0..160)),
        ) {
            let slices = [&frames[0][..], &frames[1][..], &frames[2][..], &frames[3][..]];
            prop_assert_eq!(frames4(&slices), slices.map(frame_reference));
        }
    }
}
