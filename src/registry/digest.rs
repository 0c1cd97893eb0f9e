//! Content digests: computing them and checking blobs against them while they stream.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// Why a blob failed verification.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DigestError {
    #[error("unsupported digest {0:?} (only sha256 is supported)")]
    Unsupported(String),
    #[error("blob {expected}: content has digest {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    Size {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest}: more than the expected {expected} bytes")]
    TooLong { digest: String, expected: u64 },
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:` digest, checked to be 64 lowercase hex digits (it becomes a file name).
pub fn sha256_hex(digest: &str) -> Result<&str, DigestError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(DigestError::Unsupported(digest.to_string())),
    }
}

/// Incremental digest + size check, usable from sync and async code alike.
#[derive(Clone)]
pub struct Verifier {
    expected: String,
    size: Option<u64>,
    seen: u64,
    hasher: Sha256,
}

impl Verifier {
    /// Checks against `digest` and, when known, `size`.
    pub fn new(digest: &str, size: Option<u64>) -> Result<Verifier, DigestError> {
        sha256_hex(digest)?;
        Ok(Verifier {
            expected: digest.to_string(),
            size,
            seen: 0,
            hasher: Sha256::new(),
        })
    }

    /// Feeds bytes; fails as soon as the blob is longer than its descriptor says.
    pub fn update(&mut self, data: &[u8]) -> Result<(), DigestError> {
        self.seen += data.len() as u64;
        if let Some(size) = self.size {
            if self.seen > size {
                return Err(DigestError::TooLong {
                    digest: self.expected.clone(),
                    expected: size,
                });
            }
        }
        self.hasher.update(data);
        Ok(())
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Checks size and digest at end of stream.
    pub fn finish(self) -> Result<(), DigestError> {
        if let Some(size) = self.size {
            if self.seen != size {
                return Err(DigestError::Size {
                    digest: self.expected,
                    expected: size,
                    actual: self.seen,
                });
            }
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if actual != self.expected {
            return Err(DigestError::Mismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(())
    }
}

/// A reader that verifies what passes through it. Reading past the expected size fails at once;
/// the digest is checked by [`VerifyingReader::finish`], which first drains what the consumer did
/// not read (a tar stream's trailing padding, say), so the whole blob is always covered.
pub struct VerifyingReader<R> {
    inner: R,
    verifier: Option<Verifier>,
    failure: Option<DigestError>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, verifier: Verifier) -> Self {
        VerifyingReader {
            inner,
            verifier: Some(verifier),
            failure: None,
        }
    }

    /// A size failure seen while reading, if any (the consumer only saw an `io::Error`).
    pub fn failure(&self) -> Option<&DigestError> {
        self.failure.as_ref()
    }

    /// Reads the rest of the stream and checks digest and size.
    pub fn finish(mut self) -> Result<(), FinishError> {
        if let Some(f) = self.failure.take() {
            return Err(FinishError::Digest(f));
        }
        io::copy(&mut self, &mut io::sink()).map_err(|e| match self.failure.take() {
            Some(f) => FinishError::Digest(f),
            None => FinishError::Io(e),
        })?;
        let v = self.verifier.take().expect("verifier present until finish");
        v.finish().map_err(FinishError::Digest)
    }
}

/// Why [`VerifyingReader::finish`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error(transparent)]
    Digest(DigestError),
    #[error("reading blob: {0}")]
    Io(io::Error),
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(io::Error::new(io::ErrorKind::InvalidData, f.to_string()));
        }
        let n = self.inner.read(buf)?;
        if let Some(v) = self.verifier.as_mut() {
            if let Err(e) = v.update(&buf[..n]) {
                let msg = e.to_string();
                self.failure = Some(e);
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies() {
        let d = sha256_digest(b"hello");
        let mut r = VerifyingReader::new(&b"hello"[..], Verifier::new(&d, Some(5)).unwrap());
        let mut b = [0u8; 2];
        r.read_exact(&mut b).unwrap();
        r.finish().unwrap();
        let r = VerifyingReader::new(&b"hellO"[..], Verifier::new(&d, Some(5)).unwrap());
        assert!(matches!(
            r.finish(),
            Err(FinishError::Digest(DigestError::Mismatch { .. }))
        ));
        let r = VerifyingReader::new(&b"hello!"[..], Verifier::new(&d, Some(5)).unwrap());
        assert!(matches!(
            r.finish(),
            Err(FinishError::Digest(DigestError::TooLong { .. }))
        ));
        let r = VerifyingReader::new(&b"hell"[..], Verifier::new(&d, Some(5)).unwrap());
        assert!(matches!(
            r.finish(),
            Err(FinishError::Digest(DigestError::Size { .. }))
        ));
        assert!(Verifier::new("sha256:../../etc", None).is_err());
    }
}
