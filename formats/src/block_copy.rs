//! Copying a tensor into an output file at its planned offset, a block at a time on every
//! core (rayon's pool), the way `cp` copies: each worker reads a block of the source (where it is mapped),
//! checksums it, edits it into a buffer of its own that stays in the CPU cache, checksums the
//! result and `pwrite`s it. Blocks finish in any order (their offsets are known), and the
//! checksums of whole tensors are put together from the blocks' (`crc32c_combine`).
//!
//! This replaced a write-behind thread feeding 4 MiB buffers through a shared map of the output
//! (docs/performance.md, `notes:write-path`): buffers that large are not cache-resident, and the
//! map's faults, populates and unmaps cost more system time than `pwrite` from a small buffer.

use std::fs::File;
use std::ops::Range;

use rayon::prelude::*;

use crate::edit::TensorEdit;

/// Bytes per block: 64 Ki float32 weights. Source, other half of a posterior pair and output
/// buffer of a block together stay within a core's L2 cache; a multiple of 64 elements of any
/// width, so edits see whole mask words.
pub const BLOCK: usize = 256 << 10;

/// CRC32C of a tensor's bytes as read and as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Over the source bytes, to verify against the source's index.
    pub source_crc: u32,
    /// Over the bytes written (the same as `source_crc` without an edit).
    pub output_crc: u32,
}

/// One tensor of [`copy_together`]: where it goes in the output, its stored bytes (e.g. where a
/// source file is mapped), its edit if any, and what to call with each block's byte range of
/// `src` once it is written (to drop mapped source pages).
#[derive(Clone, Copy)]
pub struct Piece<'a> {
    /// Byte offset in the output.
    pub at: u64,
    /// The stored bytes.
    pub src: &'a [u8],
    /// How they are rewritten.
    pub edit: Option<&'a dyn TensorEdit>,
    /// Called with each block's range of `src` once it is written.
    pub release: &'a (dyn Fn(Range<usize>) + Sync),
}

/// Writes `src`, rewritten by `edit` if given, to `out` at byte `at` (see [`copy_together`]).
pub fn copy_tensor(out: &File, at: u64, src: &[u8], edit: Option<&dyn TensorEdit>, release: &(dyn Fn(Range<usize>) + Sync)) -> std::io::Result<Copied> {
    let copied = copy_together(out, &[Piece { at, src, edit, release }])?;
    Ok(copied.first().copied().unwrap_or(Copied { source_crc: 0, output_crc: 0 }))
}

/// Writes each piece's bytes, rewritten by its edit, to `out` at its offset, blocks in parallel
/// on rayon's pool (on which an edit's own parallel loops then run without extra threads). Block
/// `b` of every piece is copied by one job, one piece after the other: the edits of the two
/// halves of a posterior pair then decide each block once (the second finds the first's
/// decisions on its thread). A failed write stops the copy and is returned (the output is then
/// incomplete and must be discarded). Returns each piece's checksums.
pub fn copy_together(out: &File, pieces: &[Piece]) -> std::io::Result<Vec<Copied>> {
    let blocks = pieces.iter().map(|p| p.src.len().div_ceil(BLOCK)).max().unwrap_or(0);
    let crcs = (0..blocks)
        .into_par_iter()
        // A buffer per worker, reused for every block it edits: it stays in the cache.
        .map_init(Vec::new, |buf, b| {
            pieces
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let range = block_range(p, b);
                    if range.is_empty() {
                        return Ok((0, 0));
                    }
                    let next = pieces.get(i + 1).map_or(&[][..], |n| &n.src[block_range(n, b)]);
                    NEXT_BLOCK.with(|n| n.set((next.as_ptr() as usize, next.len())));
                    let crc = copy_block(out, p.at + range.start as u64, range.start as u64, &p.src[range.clone()], p.edit, buf);
                    NEXT_BLOCK.with(|n| n.set((0, 0)));
                    (p.release)(range);
                    crc
                })
                .collect::<std::io::Result<Vec<(u32, u32)>>>()
        })
        .collect::<std::io::Result<Vec<Vec<(u32, u32)>>>>()?;
    // Each tensor's checksums from its blocks', in order: appending a whole block to a CRC is
    // one multiplication by a constant (the crate's `crc32c_combine` derives that constant
    // anew on every call, which took a fifth of a pruning's time).
    let shift = shift_by(BLOCK);
    let copied = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut copied = Copied { source_crc: 0, output_crc: 0 };
            for (b, block) in crcs.iter().enumerate().take(p.src.len().div_ceil(BLOCK)) {
                let (s, o) = block.get(i).copied().unwrap_or((0, 0));
                let len = BLOCK.min(p.src.len() - b * BLOCK);
                if len == BLOCK {
                    copied.source_crc = multiply(shift, copied.source_crc) ^ s;
                    copied.output_crc = multiply(shift, copied.output_crc) ^ o;
                } else {
                    copied.source_crc = crc32c::crc32c_combine(copied.source_crc, s, len);
                    copied.output_crc = crc32c::crc32c_combine(copied.output_crc, o, len);
                }
            }
            copied
        })
        .collect();
    Ok(copied)
}

/// Bytes of block `b` of a piece's source (empty past its end).
fn block_range(p: &Piece, b: usize) -> Range<usize> {
    (b * BLOCK).min(p.src.len())..((b + 1) * BLOCK).min(p.src.len())
}

thread_local! {
    /// Address and length of the source block this thread copies right after the block being
    /// copied now, in the same job of [`copy_together`] (`(0, 0)` for none).
    static NEXT_BLOCK: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Whether `bytes` are the source block that this thread copies next, right after the block
/// whose edit is running now, in the same job of [`copy_together`]: that copy reports them to
/// its piece's `release`, so an edit that read them (the other half of a posterior pair) need
/// not release them itself.
pub fn copied_next(bytes: &[u8]) -> bool {
    !bytes.is_empty() && NEXT_BLOCK.with(|n| n.get() == (bytes.as_ptr() as usize, bytes.len()))
}

/// CRC32C's polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo CRC32C's polynomial, both bit-reflected (bit 31 is x^0), as zlib's
/// `multmodp`.
fn multiply(a: u32, mut b: u32) -> u32 {
    let (mut m, mut p) = (1u32 << 31, 0u32);
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// x^(8 * len) modulo the polynomial: `multiply(shift_by(len), crc(a)) ^ crc(b)` is the
/// CRC32C of `a` followed by `b` when `b` is `len` bytes long (zlib's `crc32_combine_gen`).
fn shift_by(len: usize) -> u32 {
    // x^(2^k) for k = 3, 4, ...: squares, starting from x^8.
    let mut square = 1u32 << 23;
    let (mut p, mut n) = (1u32 << 31, len);
    while n != 0 {
        if n & 1 != 0 {
            p = multiply(square, p);
        }
        square = multiply(square, square);
        n >>= 1;
    }
    p
}

/// Copies one block (`offset` bytes into its tensor) to `out` at `at`; returns the CRC32C of
/// the block as read and as written.
fn copy_block(out: &File, at: u64, offset: u64, block: &[u8], edit: Option<&dyn TensorEdit>, buf: &mut Vec<u8>) -> std::io::Result<(u32, u32)> {
    let source_crc = crc32c::crc32c(block);
    let Some(edit) = edit else {
        // Unedited: written straight from the source (the kernel copies it, as for `cp`).
        write_all_at(out, block, at)?;
        return Ok((source_crc, source_crc));
    };
    buf.resize(block.len(), 0);
    edit.apply(offset, block, buf);
    let output_crc = crc32c::crc32c(buf);
    write_all_at(out, buf, at)?;
    Ok((source_crc, output_crc))
}

/// `pwrite` of all of `data` at `at`.
pub fn write_all_at(out: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        out.write_all_at(data, at)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let (mut data, mut at) = (data, at);
        while !data.is_empty() {
            let n = out.seek_write(data, at)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Adds one to every byte, with the offset checked against the block's position.
    #[derive(Debug)]
    struct AddOne;
    impl TensorEdit for AddOne {
        fn apply(&self, offset: u64, src: &[u8], dst: &mut [u8]) {
            for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
                // The source byte at position p is p % 251: the offset must be that position.
                assert_eq!(u64::from(*s), (offset + i as u64) % 251);
                *d = s.wrapping_add(1);
            }
        }
    }

    #[test]
    fn blocks_written_out_of_order_make_the_whole_tensor_and_its_checksums() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Several blocks and a short last one, at an odd offset in the file.
        let src: Vec<u8> = (0..5 * BLOCK + 12_345).map(|i| (i % 251) as u8).collect();
        for (threads, edit) in [(1, None), (4, None), (1, Some(&AddOne as &dyn TensorEdit)), (4, Some(&AddOne))] {
            let path = dir.path().join(format!("out-{threads}-{}", edit.is_some()));
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("open");
            write_all_at(&file, b"head", 0).expect("head");
            let released = Mutex::new(Vec::new());
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            let copied = pool.install(|| copy_tensor(&file, 4, &src, edit, &|r| released.lock().expect("lock").push(r))).expect("copy");
            let want: Vec<u8> = src.iter().map(|b| if edit.is_some() { b.wrapping_add(1) } else { *b }).collect();
            let got = std::fs::read(&path).expect("read");
            assert_eq!(&got[..4], b"head");
            assert!(got[4..] == want[..], "{threads} threads, edit {}", edit.is_some());
            assert_eq!(copied, Copied { source_crc: crc32c::crc32c(&src), output_crc: crc32c::crc32c(&want) });
            // Every block released once.
            let mut released = released.into_inner().expect("lock");
            released.sort_by_key(|r| r.start);
            let blocks: Vec<Range<usize>> = (0..6).map(|b| b * BLOCK..((b + 1) * BLOCK).min(src.len())).collect();
            assert_eq!(released, blocks);
        }
    }

    #[test]
    fn tensors_copied_together_each_land_whole_with_their_checksums() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Pieces of different lengths (more blocks, fewer, none), edited or not, in one file.
        let a: Vec<u8> = (0..3 * BLOCK + 5).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..BLOCK - 7).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("out");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("open");
        let (at_b, at_c) = (a.len() as u64, (a.len() + b.len()) as u64);
        let pieces = [
            Piece { at: 0, src: &a, edit: Some(&AddOne), release: &|_| {} },
            Piece { at: at_b, src: &b, edit: None, release: &|_| {} },
            Piece { at: at_c, src: &[], edit: Some(&AddOne), release: &|_| {} },
        ];
        let copied = copy_together(&file, &pieces).expect("copy");
        let want_a: Vec<u8> = a.iter().map(|x| x.wrapping_add(1)).collect();
        let got = std::fs::read(&path).expect("read");
        assert!(got[..a.len()] == want_a[..] && got[a.len()..] == b[..]);
        let want = [(crc32c::crc32c(&a), crc32c::crc32c(&want_a)), (crc32c::crc32c(&b), crc32c::crc32c(&b)), (0, 0)];
        assert_eq!(copied, want.map(|(source_crc, output_crc)| Copied { source_crc, output_crc }));
    }

    /// Copies, recording for each block whether `other`'s block at the same offset is copied
    /// next (`copied_next`).
    #[derive(Debug)]
    struct SeesNext<'a> {
        other: &'a [u8],
        seen: Mutex<Vec<(u64, bool)>>,
    }
    impl TensorEdit for SeesNext<'_> {
        fn apply(&self, offset: u64, src: &[u8], dst: &mut [u8]) {
            dst.copy_from_slice(src);
            let at = offset as usize;
            let other = self.other.get(at..at + src.len()).unwrap_or_default();
            self.seen.lock().expect("lock").push((offset, copied_next(other)));
        }
    }

    #[test]
    fn an_edit_sees_whether_the_block_it_reads_is_copied_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::File::create(dir.path().join("out")).expect("create");
        let (a, b) = (vec![1u8; 3 * BLOCK + 8], vec![2u8; 3 * BLOCK + 8]);
        // `a`'s edit reads `b`: copied together, `b`'s block follows on the same thread.
        let reads_b = SeesNext { other: &b, seen: Mutex::new(Vec::new()) };
        let reads_a = SeesNext { other: &a, seen: Mutex::new(Vec::new()) };
        let at_b = a.len() as u64;
        let pieces = [
            Piece { at: 0, src: &a, edit: Some(&reads_b), release: &|_| {} },
            Piece { at: at_b, src: &b, edit: Some(&reads_a), release: &|_| {} },
        ];
        copy_together(&file, &pieces).expect("together");
        let seen = |e: &SeesNext| {
            let mut v = std::mem::take(&mut *e.seen.lock().expect("lock"));
            v.sort();
            v
        };
        let offsets = [0, BLOCK as u64, 2 * BLOCK as u64, 3 * BLOCK as u64];
        assert_eq!(seen(&reads_b), offsets.map(|o| (o, true)));
        // The last piece has none after it, and `a`'s block came before.
        assert_eq!(seen(&reads_a), offsets.map(|o| (o, false)));
        // Copied apart: never.
        copy_tensor(&file, 0, &a, Some(&reads_b), &|_| {}).expect("alone");
        assert_eq!(seen(&reads_b), offsets.map(|o| (o, false)));
        assert!(!copied_next(&b[..BLOCK]), "nothing is copied outside a job");
    }

    #[test]
    fn appending_by_a_constant_equals_the_checksum_of_both() {
        let data: Vec<u8> = (0..3 * BLOCK + 77).map(|i| (i * 7 % 253) as u8).collect();
        for (a, len) in [(0, BLOCK), (5, BLOCK), (BLOCK, 1), (17, 1000), (2 * BLOCK, BLOCK + 77)] {
            let (first, second) = (&data[..a], &data[a..a + len]);
            let joined = multiply(shift_by(len), crc32c::crc32c(first)) ^ crc32c::crc32c(second);
            assert_eq!(joined, crc32c::crc32c(&data[..a + len]), "{a} + {len}");
        }
    }

    #[test]
    fn a_full_disk_is_an_error() {
        // /dev/full fails every write with ENOSPC.
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else { return };
        let src = vec![1u8; 3 * BLOCK];
        let err = copy_tensor(&full, 0, &src, None, &|_| {}).expect_err("ENOSPC");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn an_empty_tensor_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::File::create(dir.path().join("e")).expect("create");
        let copied = copy_tensor(&file, 0, &[], None, &|_| panic!("nothing to release")).expect("copy");
        assert_eq!(copied, Copied { source_crc: 0, output_crc: 0 });
    }
}
