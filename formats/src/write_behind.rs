//! A writer that hands full buffers to a thread of its own, which checksums and writes them,
//! so that the kernel's copy of the data into the page cache (most of the cost of writing a
//! checkpoint whose source is cached) overlaps with producing the next bytes.

use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Buffers in flight between producer and writer thread (besides the one being filled).
const QUEUED: usize = 2;

/// Length and CRC32C of one piece: the bytes between two [`WriteBehind::end_piece`] calls
/// (or of one buffer, for a piece longer than a buffer).
pub type PieceChecksum = (u64, u32);

/// What the writer thread hands back.
type Outcome<W> = io::Result<(W, Vec<PieceChecksum>)>;

/// Writes to `W` on a background thread, a buffer at a time, and takes the CRC32C of every
/// buffer written. Call [`WriteBehind::finish`] to get `W` back with the checksums and the
/// first write error, if any; dropping it instead waits for the thread and drops `W`.
pub struct WriteBehind<W: Write + Send + 'static> {
    /// Always `capacity` long; `used` bytes of it are data.
    buf: Vec<u8>,
    used: usize,
    to_writer: Option<SyncSender<(Vec<u8>, usize)>>,
    spare: Receiver<Vec<u8>>,
    writer: Option<JoinHandle<Outcome<W>>>,
}

impl<W: Write + Send + 'static> WriteBehind<W> {
    /// Starts the thread that writes to `inner` in buffers of `capacity` bytes.
    pub fn new(inner: W, capacity: usize) -> io::Result<WriteBehind<W>> {
        let (to_writer, queue) = sync_channel::<(Vec<u8>, usize)>(QUEUED);
        let (give_back, spare) = channel();
        let writer = std::thread::Builder::new().name("write-behind".into()).spawn(move || {
            let mut inner = inner;
            let mut pieces = Vec::new();
            for (buf, used) in queue {
                let data = &buf[..used];
                pieces.push((used as u64, crc32c::crc32c(data)));
                inner.write_all(data)?;
                // The producer may be gone (dropped after an error): then nobody reuses it.
                let _ = give_back.send(buf);
            }
            inner.flush()?;
            Ok((inner, pieces))
        })?;
        Ok(WriteBehind { buf: vec![0; capacity.max(8)], used: 0, to_writer: Some(to_writer), spare, writer: Some(writer) })
    }

    /// Ends the current piece: what is buffered goes to the writer thread now, so the next
    /// bytes start a checksum of their own.
    pub fn end_piece(&mut self) -> io::Result<()> {
        if self.used == 0 {
            return Ok(());
        }
        let next = self.spare.try_recv().unwrap_or_else(|_| vec![0; self.buf.len()]);
        let full = std::mem::replace(&mut self.buf, next);
        let sent = self.to_writer.as_ref().is_some_and(|tx| tx.send((full, self.used)).is_ok());
        self.used = 0;
        if sent {
            Ok(())
        } else {
            // The thread stopped: it hit a write error, which it returns.
            Err(self.stop().err().unwrap_or_else(|| io::Error::other("write-behind thread stopped")))
        }
    }

    /// Appends `len` bytes that `fill` writes in place (no copy): it is called with each
    /// stretch's position within the `len` bytes and the stretch, whose lengths are multiples
    /// of 8 when `len`, the buffer capacity and the bytes since the piece began are.
    pub fn write_with(&mut self, len: usize, fill: &mut dyn FnMut(usize, &mut [u8])) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            if self.used == self.buf.len() {
                self.end_piece()?;
            }
            let n = (len - done).min(self.buf.len() - self.used);
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

    /// Writes what is buffered, waits for the thread, and returns the inner writer (flushed)
    /// with the checksum of every piece, in order.
    pub fn finish(mut self) -> Outcome<W> {
        self.end_piece()?;
        self.stop()
    }
}

impl<W: Write + Send + 'static> Write for WriteBehind<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.used == self.buf.len() {
            self.end_piece()?;
        }
        let n = data.len().min(self.buf.len() - self.used);
        self.buf[self.used..self.used + n].copy_from_slice(&data[..n]);
        self.used += n;
        Ok(n)
    }

    /// Ends the piece (see [`WriteBehind::end_piece`]); the data reaches `W` later.
    fn flush(&mut self) -> io::Result<()> {
        self.end_piece()
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
        let mut w = WriteBehind::new(Vec::new(), 16).expect("thread");
        let mut expect = Vec::new();
        let mut pieces = Vec::new();
        for i in 0..60u32 {
            let piece: Vec<u8> = (0..i).map(|j| (i * 31 + j) as u8).collect();
            if i % 2 == 0 {
                w.write_all(&piece).expect("write");
            } else {
                w.write_with(piece.len(), &mut |at, dst| dst.copy_from_slice(&piece[at..at + dst.len()])).expect("write");
            }
            w.end_piece().expect("end");
            expect.extend_from_slice(&piece);
            pieces.extend(piece.chunks(16).map(|c| (c.len() as u64, crc32c::crc32c(c))));
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
        let mut w = WriteBehind::new(Failing, 8).expect("thread");
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
}
