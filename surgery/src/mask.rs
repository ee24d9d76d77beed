//! Which weights of a tensor a pruning keeps, one bit per weight (an 8-byte `bool` per weight
//! would be 8x the memory traffic on a 1 GiB checkpoint), and the edit that applies it.

use formats::convert::TensorEdit;
use rayon::prelude::*;

/// Kept (true) or pruned (false) for each weight of a tensor, in storage order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeepMask {
    /// Bit `i % 64` of word `i / 64` is weight `i`; bits past `len` are 0.
    words: Vec<u64>,
    len: usize,
}

impl KeepMask {
    /// A mask from its words (bits past `len` are cleared).
    pub fn from_words(mut words: Vec<u64>, len: usize) -> KeepMask {
        words.resize(len.div_ceil(64), 0);
        if !len.is_multiple_of(64) {
            if let Some(last) = words.last_mut() {
                *last &= (1u64 << (len % 64)) - 1;
            }
        }
        KeepMask { words, len }
    }

    /// A mask from one `bool` per weight.
    pub fn from_bools(keep: &[bool]) -> KeepMask {
        let words = keep.chunks(64).map(|c| c.iter().enumerate().fold(0u64, |w, (i, &k)| w | (u64::from(k) << i))).collect();
        KeepMask { words, len: keep.len() }
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tensor has no weights.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether weight `i` is kept (false past the end).
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Number of kept weights.
    pub fn kept(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Kept or not, weight by weight.
    pub fn iter(&self) -> impl Iterator<Item = bool> + '_ {
        (0..self.len).map(|i| self.get(i))
    }

    /// The 64-weight words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}

/// Rewrites a tensor as it streams: pruned elements become `fill`, kept ones are copied.
#[derive(Debug, Clone)]
pub struct MaskEdit {
    keep: std::sync::Arc<KeepMask>,
    /// One element, little-endian.
    fill: Vec<u8>,
}

impl MaskEdit {
    /// Writes `fill` (one element's bytes: 2, 4 or 8 of them) wherever `keep` is false.
    pub fn new(keep: std::sync::Arc<KeepMask>, fill: Vec<u8>) -> MaskEdit {
        MaskEdit { keep, fill }
    }
}

/// Weights per parallel work item: a multiple of 64, so that items start on mask words.
const PAR_WEIGHTS: usize = 64 * 1024;

impl TensorEdit for MaskEdit {
    fn apply(&self, offset: u64, src: &[u8], dst: &mut [u8]) {
        let first = (offset / self.fill.len() as u64) as usize;
        apply_mask(&self.keep, first, src, dst, &self.fill);
    }
}

/// `dst = keep ? src : fill` for the elements of `src` (whole elements as wide as `fill`),
/// which are weights `first..` of `keep`.
pub fn apply_mask(keep: &KeepMask, first: usize, src: &[u8], dst: &mut [u8], fill: &[u8]) {
    let width = fill.len();
    // The stream's chunks are multiples of 64 elements (see `BundleReader::stream`); if
    // one were not, the bit-by-bit path below still gets it right.
    let aligned = first.is_multiple_of(64);
    dst.par_chunks_mut(PAR_WEIGHTS * width).zip(src.par_chunks(PAR_WEIGHTS * width)).enumerate().for_each(|(c, (d, s))| {
        let start = first + c * PAR_WEIGHTS;
        match (width, aligned) {
            (2, true) => select::<u16, 2>(keep, start, s, d, fill),
            (4, true) => select::<u32, 4>(keep, start, s, d, fill),
            (8, true) => select::<u64, 8>(keep, start, s, d, fill),
            _ => {
                for (i, (d, s)) in d.chunks_exact_mut(width).zip(s.chunks_exact(width)).enumerate() {
                    d.copy_from_slice(if keep.get(start + i) { s } else { fill });
                }
            }
        }
    });
}

/// An unsigned integer as wide as an element, to select elements without branches.
trait Lane: Copy + std::ops::BitAnd<Output = Self> + std::ops::BitOr<Output = Self> + std::ops::Not<Output = Self> {
    fn load(bytes: &[u8]) -> Self;
    fn store(self, bytes: &mut [u8]);
    /// All ones if `bit` is 1, else 0.
    fn spread(bit: u64) -> Self;
}

macro_rules! lane {
    ($t:ty, $w:literal) => {
        impl Lane for $t {
            #[inline(always)]
            fn load(bytes: &[u8]) -> Self {
                let mut b = [0u8; $w];
                b.copy_from_slice(bytes);
                <$t>::from_le_bytes(b)
            }
            #[inline(always)]
            fn store(self, bytes: &mut [u8]) {
                bytes.copy_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn spread(bit: u64) -> Self {
                (0 as $t).wrapping_sub(bit as $t)
            }
        }
    };
}
lane!(u16, 2);
lane!(u32, 4);
lane!(u64, 8);

/// `dst = keep ? src : fill`, element by element, for elements starting at weight `start`
/// (a multiple of 64): whole words of kept or pruned weights are plain copies or fills.
fn select<T: Lane, const W: usize>(keep: &KeepMask, start: usize, src: &[u8], dst: &mut [u8], fill: &[u8]) {
    let fill_lane = T::load(fill);
    let words = &keep.words[start / 64..];
    for ((d, s), &word) in dst.chunks_mut(64 * W).zip(src.chunks(64 * W)).zip(words) {
        if word == u64::MAX && s.len() == 64 * W {
            d.copy_from_slice(s);
        } else if W == 4 && s.len() == 64 * W {
            select_word_4(word, s, d, fill);
        } else {
            for (i, (d, s)) in d.chunks_exact_mut(W).zip(s.chunks_exact(W)).enumerate() {
                let m = T::spread(word >> i & 1);
                ((T::load(s) & m) | (fill_lane & !m)).store(d);
            }
        }
    }
}

/// All-ones or zero lanes for each byte of mask bits: bit `i` of the index is lane `i`.
static LANE_MASKS: [[u32; 8]; 256] = lane_masks();

const fn lane_masks() -> [[u32; 8]; 256] {
    let mut table = [[0u32; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut lane = 0;
        while lane < 8 {
            if byte >> lane & 1 == 1 {
                table[byte][lane] = u32::MAX;
            }
            lane += 1;
        }
        byte += 1;
    }
    table
}

/// [`select`] of 64 four-byte elements, eight at a time through [`LANE_MASKS`] (SIMD-friendly:
/// no per-element shifts or branches).
#[inline(always)]
fn select_word_4(word: u64, src: &[u8], dst: &mut [u8], fill: &[u8]) {
    let fill = u32::from_ne_bytes(fill.try_into().unwrap_or_default());
    for (k, (d, s)) in dst.chunks_exact_mut(32).zip(src.chunks_exact(32)).enumerate() {
        let masks = &LANE_MASKS[(word >> (8 * k) & 0xff) as usize];
        let mut out = [0u32; 8];
        for ((o, m), e) in out.iter_mut().zip(masks).zip(s.chunks_exact(4)) {
            let e = u32::from_ne_bytes(e.try_into().unwrap_or_default());
            *o = (e & m) | (fill & !m);
        }
        for (d, o) in d.chunks_exact_mut(4).zip(out) {
            d.copy_from_slice(&o.to_ne_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let bools: Vec<bool> = (0..200).map(|i| i % 3 == 0 || i == 199).collect();
        let m = KeepMask::from_bools(&bools);
        assert_eq!(m.iter().collect::<Vec<_>>(), bools);
        assert_eq!(m.kept(), bools.iter().filter(|k| **k).count());
        assert!(!m.get(200));
        assert_eq!(KeepMask::from_words(vec![u64::MAX; 4], 130).kept(), 130);
    }

    #[test]
    fn edit_matches_a_plain_select_at_any_offset() {
        let n = 3 * PAR_WEIGHTS + 77;
        let bools: Vec<bool> = (0..n).map(|i| (i * 7919) % 5 < 3 || (i / 64) % 9 == 0).collect();
        let keep = std::sync::Arc::new(KeepMask::from_bools(&bools));
        let src: Vec<u8> = (0..n as u32).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
        let fill = 0xdeadbeefu32.to_le_bytes().to_vec();
        let expect: Vec<u8> = src.chunks(4).zip(&bools).flat_map(|(s, &k)| if k { s.to_vec() } else { fill.clone() }).collect();
        let edit = MaskEdit::new(keep, fill);
        // Whole, in aligned chunks, and in unaligned chunks.
        for chunk in [n * 4, 64 * 4 * 100, 4 * 1000] {
            let mut out = vec![0u8; src.len()];
            let mut offset = 0;
            for (s, d) in src.chunks(chunk).zip(out.chunks_mut(chunk)) {
                edit.apply(offset, s, d);
                offset += s.len() as u64;
            }
            assert_eq!(out, expect, "chunks of {chunk} bytes");
        }
    }
}
