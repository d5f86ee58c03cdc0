//! Reading a long result in batches instead of one wake-up per server flush.
//!
//! PostgreSQL flushes a result to its socket 8 KiB at a time, and a gateway that keeps up
//! with its server wakes for every flush: one wake-up, one `recv` and one `send` per
//! 8 KiB. On large results that was half of the gateway's CPU
//! (`bench/results/issue16-large-result-profile.txt`), and each `send` wakes the client
//! as often. Once a result has been streaming for a while, the server socket's
//! `SO_RCVLOWAT` is raised, so the kernel wakes the reader only when a batch has gathered
//! (the read still takes everything there is).
//!
//! The end of a result is shorter than a batch and would never reach the mark, so a wait
//! while batching has a deadline. When it passes, the mark goes back to one byte, which
//! wakes the pending read at once (Linux re-checks readiness when `SO_RCVLOWAT` changes,
//! for both engines' waits), and the streak starts over. The price is that deadline once
//! per large result, never on a short one: batching starts only after
//! [`Batching::STREAK`] bytes of full reads in a row.
//!
//! Sans-IO: [`Batching`] only says which mark to set and how long a wait may take; the
//! session's server half sets it (`Transport::set_low_water`) and keeps the deadline.

use std::time::Duration;

use super::STREAMING_READ;

/// The batching state of one server connection's reads.
#[derive(Debug)]
pub struct Batching {
    /// Bytes a raised mark asks for; 0 turns batching off.
    batch: usize,
    /// Bytes read in full reads in a row.
    streak: usize,
    /// Streak needed before the mark is raised: grows after batches that ended on the
    /// deadline early (a slow producer, where waiting for a batch only adds delay).
    needed: usize,
    /// Whether the mark is raised, and how many batches arrived since.
    raised: Option<usize>,
}

impl Batching {
    /// Bytes of full reads in a row before batching starts.
    pub const STREAK: usize = 1 << 20;
    /// Longest wait for a batch. tokio's timers tick in milliseconds, so this is what a
    /// result's last bytes can wait, once per large result.
    pub const DEADLINE: Duration = Duration::from_millis(1);
    /// Batches in a row that show the producer keeps up; fewer before a deadline make
    /// the next streak longer.
    const KEEPING_UP: usize = 8;
    const MAX_STREAK: usize = 64 << 20;

    /// Room a read needs: `usual`, or while batching a third more than a batch, so a
    /// read takes a whole batch and comes back short of its room (which tells the epoll
    /// engine the socket is empty, saving a `recv` that would find nothing).
    pub fn read_room(&self, usual: usize) -> usize {
        match self.raised {
            Some(_) => usual.max(self.batch + self.batch / 3),
            None => usual,
        }
    }

    /// `batch` bytes per wake-up once streaming; 0: never batch.
    pub fn new(batch: usize) -> Batching {
        Batching {
            batch,
            streak: 0,
            needed: Self::STREAK,
            raised: None,
        }
    }

    /// How long the next read may wait before the mark must come down, if it is raised.
    pub fn deadline(&self) -> Option<Duration> {
        self.raised.map(|_| Self::DEADLINE)
    }

    /// A read of `n` bytes completed (before its deadline); `Some(bytes)`: raise the mark
    /// to that.
    pub fn after_read(&mut self, n: usize) -> Option<usize> {
        if let Some(batches) = &mut self.raised {
            *batches += 1;
            return None;
        }
        if self.batch == 0 {
            return None;
        }
        if n < STREAMING_READ {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(n);
        if self.streak < self.needed {
            return None;
        }
        self.raised = Some(0);
        Some(self.batch)
    }

    /// The deadline passed with the read still waiting: the mark comes down.
    pub fn timed_out(&mut self) {
        let batches = self.raised.take().unwrap_or(0);
        self.needed = if batches < Self::KEEPING_UP {
            self.needed.saturating_mul(2).min(Self::MAX_STREAK)
        } else {
            Self::STREAK
        };
        self.streak = 0;
    }

    /// The session is leaving the socket: whether the mark is up and must come down.
    pub fn stop(&mut self) -> bool {
        self.raised.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(b: &mut Batching, bytes: usize) -> Option<usize> {
        let mut last = None;
        for _ in 0..bytes / STREAMING_READ {
            if let Some(m) = b.after_read(STREAMING_READ) {
                last = Some(m);
            }
        }
        last
    }

    #[test]
    fn short_results_never_batch() {
        let mut b = Batching::new(65536);
        for _ in 0..10_000 {
            assert_eq!(b.after_read(200), None);
            assert_eq!(b.deadline(), None);
        }
        // Full reads broken up by a short one start the streak over.
        assert_eq!(stream(&mut b, Batching::STREAK - STREAMING_READ), None);
        assert_eq!(b.after_read(100), None);
        assert_eq!(stream(&mut b, Batching::STREAK - STREAMING_READ), None);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_long_stream_raises_the_mark_once_and_the_deadline_lowers_it() {
        let mut b = Batching::new(65536);
        assert_eq!(b.read_room(131072), 131072);
        assert_eq!(stream(&mut b, Batching::STREAK), Some(65536));
        assert_eq!(b.deadline(), Some(Batching::DEADLINE));
        assert_eq!(b.read_room(131072), 131072);
        let mut big = Batching::new(196608);
        assert_eq!(big.read_room(4096), 4096);
        stream(&mut big, Batching::STREAK);
        assert_eq!(big.read_room(131072), 262144, "a third more than a batch");
        for _ in 0..100 {
            assert_eq!(b.after_read(65536), None);
        }
        b.timed_out();
        assert_eq!(b.deadline(), None);
        assert!(!b.stop());
        // A producer that kept up: the next stream batches as soon.
        assert_eq!(stream(&mut b, Batching::STREAK), Some(65536));
        assert!(b.stop());
    }

    #[test]
    fn a_slow_producer_needs_ever_longer_streaks() {
        let mut b = Batching::new(65536);
        assert!(stream(&mut b, Batching::STREAK).is_some());
        b.timed_out();
        assert_eq!(stream(&mut b, Batching::STREAK), None);
        assert!(stream(&mut b, Batching::STREAK).is_some());
        for _ in 0..20 {
            b.timed_out();
        }
        assert_eq!(b.needed, Batching::MAX_STREAK);
    }

    #[test]
    fn off_never_batches() {
        let mut b = Batching::new(0);
        assert_eq!(stream(&mut b, 100 << 20), None);
        assert_eq!(b.deadline(), None);
    }
}
