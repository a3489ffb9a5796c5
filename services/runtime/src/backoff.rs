//! One backoff for every retry loop: full-jitter exponential delays, bounded by an attempt count or a
//! deadline, whichever ends first.
//!
//! Full jitter (uniform in `[0, min(max, base·2^(n-1))]`) rather than a fixed ladder because the
//! retries it spaces out are mostly *contention*: many writers that lost the same compare-and-set.
//! Fixed delays keep them in lock-step and they collide again; random delays spread them.

use std::time::{Duration, Instant};

use rand::Rng;

/// Retry spacing and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Cap of the first delay.
    pub base: Duration,
    /// Cap of any delay.
    pub max: Duration,
    /// Most attempts in all (the first one included).
    pub attempts: u32,
    /// Most time from the first attempt; no retry starts after it.
    pub deadline: Duration,
}

impl Backoff {
    /// For compare-and-set conflicts on a KV key: many quick retries within a few seconds, so that a
    /// burst of writers on one key all get through without spending a message delivery.
    pub const CONTENTION: Backoff = Backoff {
        base: Duration::from_millis(2),
        max: Duration::from_millis(200),
        attempts: 200,
        deadline: Duration::from_secs(10),
    };

    /// For a JetStream call that failed for a passing reason (a leader election in a cluster, a
    /// restarting server, a timeout): retried within a deadline instead of failing the handler and
    /// spending a message delivery.
    pub const UNAVAILABLE: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        attempts: u32::MAX,
        deadline: Duration::from_secs(15),
    };

    /// The delay before attempt `attempt + 1`, after `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        let micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX).max(1);
        Duration::from_micros(rand::rng().random_range(0..=micros))
    }

    /// A retry schedule starting now.
    pub fn start(&self) -> Retries {
        Retries {
            backoff: *self,
            started: Instant::now(),
            attempt: 0,
        }
    }
}

/// One retry loop's progress. Call [`Retries::next`] before each attempt.
#[derive(Debug)]
pub struct Retries {
    backoff: Backoff,
    started: Instant,
    attempt: u32,
}

impl Retries {
    /// Waits out the delay owed before the next attempt and returns its 1-based number; `None` when
    /// the attempts or the deadline are used up (the caller gives up with its last error).
    pub async fn next(&mut self) -> Option<u32> {
        if self.attempt >= self.backoff.attempts {
            return None;
        }
        if self.attempt > 0 {
            let delay = self.backoff.delay(self.attempt);
            // Saturating: `Duration::MAX` stands for "no deadline".
            if self.started.elapsed().saturating_add(delay) > self.backoff.deadline {
                return None;
            }
            tokio::time::sleep(delay).await;
        }
        self.attempt += 1;
        Some(self.attempt)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_doubling_cap_and_the_max() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
            attempts: 10,
            deadline: Duration::from_secs(1),
        };
        for _ in 0..200 {
            assert!(b.delay(1) <= Duration::from_millis(10));
            assert!(b.delay(2) <= Duration::from_millis(20));
            assert!(b.delay(9) <= Duration::from_millis(50));
        }
        // Jitter: not every delay is the cap.
        assert!((0..50).any(|_| b.delay(3) < Duration::from_millis(40)));
    }

    #[tokio::test]
    async fn the_attempt_count_ends_the_loop() {
        let b = Backoff {
            base: Duration::from_micros(1),
            max: Duration::from_micros(1),
            attempts: 3,
            deadline: Duration::from_secs(10),
        };
        let mut r = b.start();
        let mut seen = Vec::new();
        while let Some(n) = r.next().await {
            seen.push(n);
        }
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn the_deadline_ends_the_loop_before_the_attempts_do() {
        let b = Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(20),
            attempts: 1_000,
            deadline: Duration::from_millis(60),
        };
        let mut r = b.start();
        while r.next().await.is_some() {}
        assert!(r.attempts() < 1_000, "stopped by the deadline");
        assert!(r.attempts() >= 1);
    }
}
