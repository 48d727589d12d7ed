//! berth patch: a request body reader that enforces a minimum average rate (issue 10,
//! point 8). The socket's read timeout bounds each read, not the body: a client sending a
//! byte just inside every timeout held a request worker for as long as it liked. This is
//! Apache mod_reqtimeout's `body=GRACE,MinRate=RATE`, counted over the time spent waiting
//! for the client (inside `read`), so a handler that is slow itself (a disk, a lock) does not
//! make its client look slow.

use std::io::{Error, ErrorKind, Read, Result};
use std::time::{Duration, Instant};

/// The minimum a request body must keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    /// Bytes per second, averaged over the whole body so far; 0 turns the check off.
    pub min_bytes_per_sec: u64,
    /// How long the body may be under the rate at its start (connection set-up, a client
    /// that waits a moment before streaming).
    pub grace: Duration,
}

impl BodyRate {
    /// No minimum: upstream tiny_http's behaviour.
    pub const NONE: BodyRate = BodyRate {
        min_bytes_per_sec: 0,
        grace: Duration::ZERO,
    };

    /// True when `bytes` received over `waited` is too slow.
    fn too_slow(&self, bytes: u64, waited: Duration) -> bool {
        self.min_bytes_per_sec > 0
            && waited > self.grace
            && (bytes as f64) < self.min_bytes_per_sec as f64 * waited.as_secs_f64()
    }
}

/// Wraps the reader of one request's body; a read that leaves the body under its minimum
/// rate fails with `TimedOut`, which the `ShutReadOnError` around it turns into a shut
/// reading side, so neither the handler nor the drain of the unread rest waits any longer.
pub(crate) struct MinRate<R> {
    inner: R,
    rate: BodyRate,
    bytes: u64,
    waited: Duration,
}

impl<R> MinRate<R> {
    pub(crate) fn new(inner: R, rate: BodyRate) -> MinRate<R> {
        MinRate {
            inner,
            rate,
            bytes: 0,
            waited: Duration::ZERO,
        }
    }
}

impl<R: Read> Read for MinRate<R> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let started = Instant::now();
        let n = self.inner.read(buf)?;
        self.waited += started.elapsed();
        self.bytes += n as u64;
        // The end of the body is never too slow: there is nothing left to wait for.
        if n > 0 && self.rate.too_slow(self.bytes, self.waited) {
            return Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "request body too slow: {} bytes in {:.1} s, under the minimum of {} bytes/s",
                    self.bytes,
                    self.waited.as_secs_f64(),
                    self.rate.min_bytes_per_sec
                ),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{BodyRate, MinRate};
    use std::io::{ErrorKind, Read};
    use std::time::Duration;

    /// Yields one byte per read, each after `delay`.
    struct Slow {
        delay: Duration,
        left: usize,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.delay);
            if self.left == 0 || buf.is_empty() {
                return Ok(0);
            }
            self.left -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }

    #[test]
    fn a_body_under_the_rate_fails_after_the_grace() {
        let rate = BodyRate {
            min_bytes_per_sec: 1000,
            grace: Duration::from_millis(30),
        };
        let slow = Slow {
            delay: Duration::from_millis(10),
            left: 100,
        };
        let mut reader = MinRate::new(slow, rate);
        let mut buf = [0u8; 8];
        let mut got = 0;
        let err = loop {
            match reader.read(&mut buf) {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        assert!(got < 100, "read all {} bytes", got);
    }

    #[test]
    fn a_fast_body_or_no_minimum_reads_to_the_end() {
        let fast = std::io::repeat(b'x').take(1 << 20);
        let rate = BodyRate {
            min_bytes_per_sec: 1000,
            grace: Duration::ZERO,
        };
        let mut out = Vec::new();
        MinRate::new(fast, rate).read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 1 << 20);
        let slow = Slow {
            delay: Duration::from_millis(2),
            left: 20,
        };
        let mut out = Vec::new();
        MinRate::new(slow, BodyRate::NONE)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 20);
    }
}
