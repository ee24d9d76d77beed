//! Walking a mapped tensor chunk by chunk and releasing each chunk leaves no pages of it
//! mapped (`Checkpoint::release`), whatever the page cache holds: a fault at a chunk's first
//! page also maps the cached pages before it in its 64 KiB window ("fault-around"), which a
//! release of only the chunk itself would leave behind, one window per chunk: resident memory
//! that grew with the checkpoint (41 MiB on a 4 GiB one).
#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use formats::checkpoint::Checkpoint;
use formats::synthetic::write_synthetic_bnn;

/// How many of the pages of `bytes` are mapped in this process (`/proc/self/pagemap`, bit 63).
fn mapped_pages(bytes: &[u8]) -> usize {
    let page = 4096;
    let (start, end) = (bytes.as_ptr() as usize / page, (bytes.as_ptr() as usize + bytes.len()).div_ceil(page));
    let mut f = File::open("/proc/self/pagemap").expect("pagemap");
    f.seek(SeekFrom::Start(8 * start as u64)).expect("seek");
    let mut raw = vec![0u8; 8 * (end - start)];
    f.read_exact(&mut raw).expect("read pagemap");
    raw.chunks_exact(8).filter(|e| u64::from_le_bytes((*e).try_into().expect("8 bytes")) >> 63 == 1).count()
}

#[test]
fn releasing_chunk_by_chunk_leaves_no_pages_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("model.ckpt");
    // One 2048 x 4096 float32 kernel (32 MiB), stored after the bias, so that its chunks do
    // not start on 64 KiB boundaries; written just now, so its pages are in the page cache.
    write_synthetic_bnn(&prefix, &[(2048, 4096)], 7).expect("write checkpoint");
    let ckpt = Checkpoint::open(&prefix).expect("open");
    let key = "den_1/kernel_posterior_untransformed_scale";
    let data = ckpt.read_unverified(key).expect("read");
    let bytes = data.bytes().expect("numeric");
    let chunk = (4 << 20) + 4 * 1000;
    let mut sum = 0u64;
    for (i, c) in bytes.chunks(chunk).enumerate() {
        // Touch every page, as a reader of the values does.
        sum += c.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>();
        ckpt.release(key, i * chunk..i * chunk + c.len());
    }
    assert!(sum > 0);
    let left = mapped_pages(bytes);
    // Without the fault-around margin, 21 pages stayed mapped here (up to 15 per chunk).
    assert!(left <= 2, "{left} pages of the walked tensor still mapped");
}

#[test]
fn blocks_released_out_of_order_leave_no_pages_behind() {
    use formats::checkpoint::WindowedRelease;
    use formats::synthetic::SplitMix64;
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("model.ckpt");
    write_synthetic_bnn(&prefix, &[(2048, 4096)], 7).expect("write checkpoint");
    let ckpt = Checkpoint::open(&prefix).expect("open");
    let key = "den_1/kernel_posterior_loc";
    let data = ckpt.read_unverified(key).expect("read");
    let bytes = data.bytes().expect("numeric");
    // 256 KiB blocks in a shuffled order, as parallel workers finish them: a touch maps the
    // whole page-cache folio around a page, so releasing each block alone would leave the rest
    // of its folios mapped (with large folios, most of the tensor).
    let block = 256 << 10;
    let mut order: Vec<usize> = (0..bytes.len().div_ceil(block)).collect();
    SplitMix64(3).shuffle(&mut order);
    let windows = WindowedRelease::new(&ckpt, key, bytes.len());
    let mut sum = 0u64;
    for b in order {
        let range = b * block..((b + 1) * block).min(bytes.len());
        sum += bytes[range.clone()].iter().step_by(4096).map(|&v| u64::from(v)).sum::<u64>();
        windows.done(range);
    }
    assert!(sum > 0);
    let left = mapped_pages(bytes);
    assert!(left <= 2, "{left} pages of the tensor still mapped");
}
