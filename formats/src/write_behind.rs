//! A writer that hands full buffers to a thread of its own, which checksums and writes them,
//! so that the kernel's copy of the data into the page cache (most of the cost of writing a
//! checkpoint whose source is cached) overlaps with producing the next bytes.

use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Buffers in flight between producer and writer thread (besides the one being filled).
const QUEUED: usize = 2;

/// Length and CRC32C of one piece: the bytes between two [`WriteBehind::end_piece`] calls
/// (split where a piece spans buffers).
pub type PieceChecksum = (u64, u32);

/// What the writer thread hands back.
type Outcome<W> = io::Result<(W, Vec<PieceChecksum>)>;

/// A full buffer: its bytes, how many are data, and where pieces end within them.
type Filled = (Vec<u8>, usize, Vec<usize>);

/// Writes to `W` a buffer at a time, taking the CRC32C of every piece written, on a
/// background thread once there is more than one buffer of data (a small file is written
/// at `finish`, with no thread). Call [`WriteBehind::finish`] to get `W` back with the
/// checksums and the first write error, if any; dropping it instead drops `W`.
pub struct WriteBehind<W: Write + Send + 'static> {
    /// Always `capacity` long; `used` bytes of it are data, pieces ending at `ends`.
    buf: Vec<u8>,
    used: usize,
    ends: Vec<usize>,
    /// Until the thread starts.
    inner: Option<W>,
    to_writer: Option<SyncSender<Filled>>,
    spare: Option<Receiver<Vec<u8>>>,
    writer: Option<JoinHandle<Outcome<W>>>,
    /// Whether pieces are checksummed (else the checksums handed back are empty).
    checksums: bool,
}

impl<W: Write + Send + 'static> WriteBehind<W> {
    /// A writer to `inner` in buffers of `capacity` bytes.
    pub fn new(inner: W, capacity: usize) -> WriteBehind<W> {
        WriteBehind { buf: vec![0; capacity.max(8)], used: 0, ends: Vec::new(), inner: Some(inner), to_writer: None, spare: None, writer: None, checksums: true }
    }

    /// A writer like [`WriteBehind::new`] that takes no checksums (for formats without them).
    pub fn without_checksums(inner: W, capacity: usize) -> WriteBehind<W> {
        let mut w = WriteBehind::new(inner, capacity);
        w.checksums = false;
        w
    }

    /// Ends the current piece, so the next bytes get a checksum of their own.
    pub fn end_piece(&mut self) {
        if self.used > self.ends.last().copied().unwrap_or(0) {
            self.ends.push(self.used);
        }
    }

    /// Hands the full buffer to the writer thread, starting it the first time.
    fn send(&mut self) -> io::Result<()> {
        if let Some(inner) = self.inner.take() {
            let (to_writer, queue) = sync_channel::<Filled>(QUEUED);
            let (give_back, spare) = channel();
            let checksums = self.checksums;
            let spawned = std::thread::Builder::new().name("write-behind".into()).spawn(move || {
                let mut inner = inner;
                let mut pieces = Vec::new();
                for (buf, used, ends) in queue {
                    write_buffer(&mut inner, &buf[..used], &ends, checksums.then_some(&mut pieces))?;
                    // The producer may be gone (dropped after an error): then nobody reuses it.
                    let _ = give_back.send(buf);
                }
                inner.flush()?;
                Ok((inner, pieces))
            });
            self.writer = Some(spawned?);
            self.to_writer = Some(to_writer);
            self.spare = Some(spare);
        }
        let next = self.spare.as_ref().and_then(|s| s.try_recv().ok()).unwrap_or_else(|| vec![0; self.buf.len()]);
        let full = (std::mem::replace(&mut self.buf, next), self.used, std::mem::take(&mut self.ends));
        self.used = 0;
        if self.to_writer.as_ref().is_some_and(|tx| tx.send(full).is_ok()) {
            Ok(())
        } else {
            // The thread stopped: it hit a write error, which it returns.
            Err(self.stop().err().unwrap_or_else(|| io::Error::other("write-behind thread stopped")))
        }
    }

    /// Appends `len` bytes that `fill` writes in place (no copy): it is called with each
    /// stretch's position within the `len` bytes and the stretch. Every stretch but the last
    /// is a multiple of `align` bytes long (a buffer goes out early rather than split one), so
    /// each starts at a multiple of `align`.
    pub fn write_with(&mut self, len: usize, align: usize, fill: &mut dyn FnMut(usize, &mut [u8])) -> io::Result<()> {
        let align = align.clamp(1, self.buf.len());
        let mut done = 0;
        while done < len {
            let left = len - done;
            let room = self.buf.len() - self.used;
            let n = if left <= room { left } else { room / align * align };
            if n == 0 {
                self.send()?;
                continue;
            }
            fill(done, &mut self.buf[self.used..self.used + n]);
            self.used += n;
            done += n;
        }
        Ok(())
    }

    /// Closes the queue and waits for the thread.
    fn stop(&mut self) -> Outcome<W> {
        drop(self.to_writer.take());
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => Err(io::Error::other("write-behind thread panicked")),
            None => Err(io::Error::other("write-behind thread already stopped")),
        }
    }

    /// Writes what is buffered and returns the inner writer (flushed) with the checksum of
    /// every piece, in order.
    pub fn finish(mut self) -> Outcome<W> {
        self.end_piece();
        if let Some(mut inner) = self.inner.take() {
            let mut pieces = Vec::new();
            write_buffer(&mut inner, &self.buf[..self.used], &self.ends, self.checksums.then_some(&mut pieces))?;
            inner.flush()?;
            return Ok((inner, pieces));
        }
        if self.used > 0 {
            self.send()?;
        }
        self.stop()
    }
}

/// Writes `data` and records the checksum of each piece in it (`ends`: where pieces end), if
/// `pieces` are kept.
fn write_buffer(inner: &mut impl Write, data: &[u8], ends: &[usize], pieces: Option<&mut Vec<PieceChecksum>>) -> io::Result<()> {
    let Some(pieces) = pieces else {
        return inner.write_all(data);
    };
    let mut start = 0;
    for &end in ends.iter().chain([&data.len()]) {
        if end > start {
            pieces.push(((end - start) as u64, crc32c::crc32c(&data[start..end])));
            start = end;
        }
    }
    inner.write_all(data)
}

impl<W: Write + Send + 'static> Write for WriteBehind<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.used == self.buf.len() {
            self.send()?;
        }
        let n = data.len().min(self.buf.len() - self.used);
        self.buf[self.used..self.used + n].copy_from_slice(&data[..n]);
        self.used += n;
        Ok(n)
    }

    /// Does nothing: the data reaches `W` as buffers fill, and at [`WriteBehind::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for WriteBehind<W> {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_with_piece_checksums() {
        let mut w = WriteBehind::new(Vec::new(), 16);
        let mut expect = Vec::new();
        let mut pieces = Vec::new();
        for i in 0..60u32 {
            let piece: Vec<u8> = (0..i).map(|j| (i * 31 + j) as u8).collect();
            if i % 2 == 0 {
                w.write_all(&piece).expect("write");
            } else {
                w.write_with(piece.len(), 1, &mut |at, dst| dst.copy_from_slice(&piece[at..at + dst.len()])).expect("write");
            }
            w.end_piece();
            // A piece is split where it crosses a 16-byte buffer boundary.
            let mut at = expect.len();
            expect.extend_from_slice(&piece);
            while at < expect.len() {
                let end = (at / 16 + 1) * 16;
                let end = end.min(expect.len());
                pieces.push(((end - at) as u64, crc32c::crc32c(&expect[at..end])));
                at = end;
            }
        }
        let (out, sums) = w.finish().expect("finish");
        assert_eq!(out, expect);
        assert_eq!(sums, pieces);
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_reaches_the_producer() {
        let mut w = WriteBehind::new(Failing, 8);
        let mut result = Ok(());
        for _ in 0..100 {
            result = w.write_all(b"abcdefghij");
            if result.is_err() {
                break;
            }
        }
        let err = result.and_then(|_| w.finish().map(|_| ())).expect_err("must fail");
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn aligned_stretches_start_on_the_alignment() {
        let mut w = WriteBehind::new(Vec::new(), 64);
        w.write_all(&[7; 6]).expect("write");
        let data: Vec<u8> = (0..200u8).collect();
        let mut starts = Vec::new();
        w.write_with(data.len(), 8, &mut |at, dst| {
            starts.push((at, dst.len()));
            dst.copy_from_slice(&data[at..at + dst.len()]);
        })
        .expect("write");
        // 58 bytes of room after the 6: 56 of them used, then whole buffers of 64.
        assert_eq!(starts, vec![(0, 56), (56, 64), (120, 64), (184, 16)]);
        let (out, _) = w.finish().expect("finish");
        assert_eq!(&out[6..], &data[..]);
    }

    #[test]
    fn small_files_are_written_without_a_thread() {
        let mut w = WriteBehind::new(Vec::new(), 64);
        w.write_all(b"abc").expect("write");
        w.end_piece();
        w.write_all(b"defg").expect("write");
        assert!(w.writer.is_none());
        let (out, sums) = w.finish().expect("finish");
        assert_eq!(out, b"abcdefg");
        assert_eq!(sums, vec![(3, crc32c::crc32c(b"abc")), (4, crc32c::crc32c(b"defg"))]);
    }
}
