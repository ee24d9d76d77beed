//! Walking a mapped tensor chunk by chunk and releasing each chunk leaves no pages of it
//! mapped (`Checkpoint::release`), whatever the page cache holds: a fault at a chunk's first
//! page also maps the cached pages before it in its 64 KiB window ("fault-around"), which a
//! release of only the chunk itself would leave behind, one window per chunk: resident memory
//! that grew with the checkpoint (41 MiB on a 4 GiB one).
#![cfg(target_os = "linux")]

use formats::checkpoint::Checkpoint;
use formats::synthetic::write_synthetic_bnn;

/// Writes a checkpoint of one 2048 x 4096 float32 kernel (32 MiB), stored after the bias, so
/// that its chunks do not start on 64 KiB boundaries (written just now, so its pages are in the
/// page cache); has `walk` touch and release the stored bytes of `key` (returning a sum of what
/// it read); returns how many of their pages are still mapped.
fn pages_left_after(key: &str, walk: impl FnOnce(&Checkpoint, &[u8]) -> u64) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("model.ckpt");
    write_synthetic_bnn(&prefix, &[(2048, 4096)], 7).expect("write checkpoint");
    let ckpt = Checkpoint::open(&prefix).expect("open");
    let data = ckpt.read_unverified(key).expect("read");
    let bytes = data.bytes().expect("numeric");
    assert!(walk(&ckpt, bytes) > 0, "the values were read");
    formats::synthetic::mapped_pages(bytes).expect("pagemap")
}

#[test]
fn releasing_chunk_by_chunk_leaves_no_pages_behind() {
    let key = "den_1/kernel_posterior_untransformed_scale";
    let left = pages_left_after(key, |ckpt, bytes| {
        let chunk = (4 << 20) + 4 * 1000;
        let mut sum = 0u64;
        for (i, c) in bytes.chunks(chunk).enumerate() {
            // Touch every page, as a reader of the values does.
            sum += c.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>();
            ckpt.release(key, i * chunk..i * chunk + c.len());
        }
        sum
    });
    // Without the fault-around margin, 21 pages stayed mapped here (up to 15 per chunk).
    assert!(left <= 2, "{left} pages of the walked tensor still mapped");
}

#[test]
fn blocks_released_out_of_order_leave_no_pages_behind() {
    use formats::checkpoint::WindowedRelease;
    use formats::synthetic::SplitMix64;
    let key = "den_1/kernel_posterior_loc";
    let left = pages_left_after(key, |ckpt, bytes| {
        // 256 KiB blocks in a shuffled order, as parallel workers finish them: a touch maps the
        // whole page-cache folio around a page, so releasing each block alone would leave the
        // rest of its folios mapped (with large folios, most of the tensor).
        let block = 256 << 10;
        let mut order: Vec<usize> = (0..bytes.len().div_ceil(block)).collect();
        SplitMix64(3).shuffle(&mut order);
        let windows = WindowedRelease::new(ckpt, key, bytes.len());
        let mut sum = 0u64;
        for b in order {
            let range = b * block..((b + 1) * block).min(bytes.len());
            sum += bytes[range.clone()].iter().step_by(4096).map(|&v| u64::from(v)).sum::<u64>();
            windows.done(range);
        }
        sum
    });
    assert!(left <= 2, "{left} pages of the tensor still mapped");
}
