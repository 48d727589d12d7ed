//! berth patch: lets a repeated log message through at most once per interval, counting the
//! ones held back, so a flood (EMFILE on every accept, thousands of refused connections) is
//! reported without drowning the log.

use std::time::{Duration, Instant};

pub(crate) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(number held back since the last one)` when this occurrence may be logged.
    pub(crate) fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::Duration;

    #[test]
    fn lets_the_first_through_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        let mut t = Throttle::new(Duration::ZERO);
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), Some(0));
    }
}
