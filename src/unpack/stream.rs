//! Compressed layer streams: which codec a stream uses (sniffed from its first bytes), the
//! decoder for it, and the readers the unpacker reads through (a size budget, a channel from the
//! decoding thread).

use std::cell::Cell;
use std::io::{self, BufRead, Read, Write};
use std::rc::Rc;

use sha2::{Digest, Sha256};

/// Compression of a layer blob, recognised by its magic bytes (registries do not always label
/// media types truthfully).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Sniffs the compression of a buffered stream without consuming it.
pub fn sniff<R: BufRead>(r: &mut R) -> io::Result<Compression> {
    let buf = r.fill_buf()?;
    Ok(if buf.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if buf.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// Wraps `raw` in the decoder its magic bytes call for.
pub fn decoder<'a, R: BufRead + 'a>(mut raw: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match sniff(&mut raw)? {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        Compression::None => Box::new(raw),
    })
}

/// Counts bytes and fails once over budget, so a bomb stops at the limit rather than at the disk.
pub(super) struct Budget<R> {
    pub(super) inner: R,
    pub(super) used: Rc<Cell<u64>>,
    pub(super) limit: u64,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get() + n as u64;
        self.used.set(used);
        if used > self.limit {
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        Ok(n)
    }
}

/// Reads decompressed chunks handed over by the decompression thread.
pub(super) struct ChannelReader {
    pub(super) rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    pub(super) cur: Vec<u8>,
    pub(super) pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Copies `r` to `w` through `buf`; returns the bytes copied.
pub(super) fn copy_with(
    r: &mut impl Read,
    w: &mut impl Write,
    buf: &mut [u8],
    mut hasher: Option<&mut Sha256>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        total += n as u64;
    }
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
pub(super) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
