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
//! A producer can also be slower than a batch per deadline: COPY text costs PostgreSQL
//! about 6 s of CPU per GB, so 192 KiB takes it about a millisecond, and its batches
//! arrived just after the deadline (`bench/results/issue16-read-batches.txt`, session 18).
//! Each such deadline started the streak over: a megabyte of 8 KiB reads before the next
//! batch. So the read a lowered mark wakes says which case it was: little (the end of a
//! result, or a stall) starts the streak over; at least half a batch (a producer just
//! behind) raises the mark again at once, to three quarters of what did arrive, and
//! eight batches in time bring the first batch back.
//!
//! How much arrives per deadline depends on the producer and on the hour: on the bench
//! machine PostgreSQL makes about 250 KiB of narrow rows per millisecond and 700 KiB of
//! wide ones. So a stream's first batch is [`Batching::START`], and each eight batches in
//! time grow it by half, up to `[server] read_batch_bytes` (512 KiB by default). The
//! first late batch brings it back down to what the producer makes, and the stream grows
//! no further than that (or the first batch): each late batch costs a deadline's wait,
//! and a mark that kept growing past the producer would pay it every few batches. Larger
//! batches cost the gateway fewer wake-ups (`bench/results/issue16-read-batches.txt`,
//! session 19).
//!
//! A result that is complete (the server owes the client nothing) lowers the mark and
//! ends the streak whatever the read: the next statement's answer, a few bytes perhaps,
//! must not wait for a batch, and its own streak starts from nothing.
//!
//! Sans-IO: [`Batching`] only says which mark to set and how long a wait may take; the
//! session's server half sets it (`Transport::set_low_water`) and keeps the deadline.

use std::time::Duration;

use super::STREAMING_READ;

/// The batching state of one server connection's reads.
#[derive(Debug)]
pub struct Batching {
    /// The largest mark; 0 turns batching off.
    batch: usize,
    /// Bytes the raised mark asks for: from [`Batching::start`] up to `ceiling` for a producer that
    /// keeps up, less for one slower than a batch per deadline.
    mark: usize,
    /// How far this stream's mark may grow: `batch`, until a late batch shows what the
    /// producer makes per deadline; then no further than the first batch or the mark that late
    /// batch set, so one stream pays for growing too far once, not every few batches.
    ceiling: usize,
    /// Bytes read in full reads in a row.
    streak: usize,
    /// Streak needed before the mark is raised: grows after batches that ended on the
    /// deadline early (a slow producer, where waiting for a batch only adds delay).
    needed: usize,
    /// Batches in time since the mark last changed.
    on_time: usize,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The kernel's mark of one byte: every flush wakes the read.
    Streaming,
    /// The mark is raised; batches arrived since it first went up.
    Raised(usize),
    /// The deadline lowered the mark; the read it woke tells why the batch was late.
    Lowered(usize),
}

/// What to set the mark to after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Raise {
        bytes: usize,
        /// A stream starts batching (rather than a late batch raising the mark again).
        fresh: bool,
    },
    /// Back to the kernel's one byte.
    Lower,
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
    /// The smallest mark a slow producer's batches shrink to: below it, batching saves
    /// too few wake-ups to be worth a deadline.
    const MIN_MARK: usize = 4 * STREAMING_READ;
    /// The first mark of a stream: what a narrow result brought in time on this project's
    /// bench machine (`bench/results/issue16-read-batches.txt`).
    pub const START: usize = 192 << 10;

    /// Room a read needs: `usual`, or while batching a third more than a batch, so a
    /// read takes a whole batch and comes back short of its room (which tells the epoll
    /// engine the socket is empty, saving a `recv` that would find nothing).
    pub fn read_room(&self, usual: usize) -> usize {
        match self.state {
            State::Raised(_) => usual.max(self.mark + self.mark / 3),
            State::Streaming | State::Lowered(_) => usual,
        }
    }

    /// Up to `batch` bytes per wake-up once streaming; 0: never batch.
    pub fn new(batch: usize) -> Batching {
        Batching {
            batch,
            mark: batch.min(Self::START),
            ceiling: batch,
            on_time: 0,
            streak: 0,
            needed: Self::STREAK,
            state: State::Streaming,
        }
    }

    /// Bytes a fresh mark asks for: [`Batching::START`], or the setting if smaller.
    fn start(&self) -> usize {
        self.batch.min(Self::START)
    }

    /// How long the next read may wait before the mark must come down, if it is raised.
    pub fn deadline(&self) -> Option<Duration> {
        matches!(self.state, State::Raised(_)).then_some(Self::DEADLINE)
    }

    /// A read of `n` bytes completed and was taken in; `idle`: with it the server owes the
    /// client nothing (the result is complete). `Some`: set the mark.
    pub fn after_read(&mut self, n: usize, idle: bool) -> Option<Mark> {
        match self.state {
            // The result ended on a batch: the mark must not hold up the next statement's
            // answer, which may be a few bytes.
            State::Raised(_) if idle => {
                self.state = State::Streaming;
                self.streak = 0;
                return Some(Mark::Lower);
            }
            State::Raised(batches) => {
                self.state = State::Raised(batches + 1);
                self.on_time += 1;
                // A producer that keeps up: a larger batch, which a late one would bring
                // down again. One that was only slow for a while gets at least the first
                // batch back.
                if self.mark < self.ceiling && self.on_time >= Self::KEEPING_UP {
                    let grown = (self.mark + self.mark / 2) / STREAMING_READ * STREAMING_READ;
                    self.mark = grown.max(self.start()).min(self.ceiling);
                    self.on_time = 0;
                    return Some(Mark::Raise {
                        bytes: self.mark,
                        fresh: false,
                    });
                }
                return None;
            }
            State::Lowered(batches)
                if !idle && n >= self.mark / 2 && n / 4 * 3 >= Self::MIN_MARK =>
            {
                // Half a batch or more was there: the producer is behind, not done.
                let mark = n / 4 * 3 / STREAMING_READ * STREAMING_READ;
                self.mark = mark.min(self.mark);
                self.ceiling = self.ceiling.min(self.mark.max(self.start()));
                self.on_time = 0;
                self.state = State::Raised(batches + 1);
                return Some(Mark::Raise {
                    bytes: self.mark,
                    fresh: false,
                });
            }
            State::Lowered(batches) => {
                self.needed = if batches < Self::KEEPING_UP {
                    self.needed.saturating_mul(2).min(Self::MAX_STREAK)
                } else {
                    Self::STREAK
                };
                self.streak = 0;
                self.state = State::Streaming;
            }
            State::Streaming => {}
        }
        if self.batch == 0 {
            return None;
        }
        if n < STREAMING_READ || idle {
            // A streak is of one result's reads.
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(n);
        if self.streak < self.needed {
            return None;
        }
        self.mark = self.start();
        self.ceiling = self.batch;
        self.on_time = 0;
        self.state = State::Raised(0);
        Some(Mark::Raise {
            bytes: self.start(),
            fresh: true,
        })
    }

    /// The deadline passed with the read still waiting: the mark comes down.
    pub fn timed_out(&mut self) {
        if let State::Raised(batches) = self.state {
            self.state = State::Lowered(batches);
        }
    }

    /// The session is leaving the socket: whether the mark is up and must come down.
    pub fn stop(&mut self) -> bool {
        matches!(
            std::mem::replace(&mut self.state, State::Streaming),
            State::Raised(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mark raised again within a stream (not a fresh one).
    fn again(bytes: usize) -> Option<Mark> {
        Some(Mark::Raise {
            bytes,
            fresh: false,
        })
    }

    /// Full reads of `bytes` in all; the mark the last raise asked for.
    fn stream(b: &mut Batching, bytes: usize) -> Option<usize> {
        let mut last = None;
        for _ in 0..bytes / STREAMING_READ {
            if let Some(Mark::Raise { bytes, .. }) = b.after_read(STREAMING_READ, false) {
                last = Some(bytes);
            }
        }
        last
    }

    #[test]
    fn short_results_never_batch() {
        let mut b = Batching::new(65536);
        for _ in 0..10_000 {
            assert_eq!(b.after_read(200, false), None);
            assert_eq!(b.deadline(), None);
        }
        // Full reads broken up by a short one start the streak over.
        assert_eq!(stream(&mut b, Batching::STREAK - STREAMING_READ), None);
        assert_eq!(b.after_read(100, false), None);
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
            assert_eq!(b.after_read(65536, false), None);
        }
        b.timed_out();
        assert_eq!(b.deadline(), None);
        // The end of the result: a few bytes.
        assert_eq!(b.after_read(300, true), None);
        assert!(!b.stop(), "the deadline already lowered the mark");
        // A producer that kept up: the next stream batches as soon.
        assert_eq!(stream(&mut b, Batching::STREAK), Some(65536));
        assert!(b.stop());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn a_batch_that_came_late_raises_a_smaller_mark_at_once() {
        let mut b = Batching::new(196608);
        let fresh = (0..Batching::STREAK / STREAMING_READ)
            .find_map(|_| b.after_read(STREAMING_READ, false))
            .unwrap();
        assert_eq!(
            fresh,
            Mark::Raise {
                bytes: 196608,
                fresh: true
            }
        );
        assert_eq!(b.after_read(200_000, false), None);
        b.timed_out();
        // 176 KiB had arrived by the deadline: the producer makes about that per deadline.
        let late = b.after_read(180_224, false).unwrap();
        assert_eq!(
            late,
            Mark::Raise {
                bytes: 131072,
                fresh: false
            },
            "three quarters of what arrived, in whole flushes"
        );
        assert_eq!(b.deadline(), Some(Batching::DEADLINE));
        assert_eq!(b.read_room(4096), 131072 + 131072 / 3);
        // Late again, with more than the mark there: a late batch never grows the mark.
        b.timed_out();
        assert_eq!(b.after_read(250_000, false), again(131072));
        // Batches in time again: the full batch comes back after a few.
        let back: Vec<_> = (0..Batching::KEEPING_UP)
            .filter_map(|_| b.after_read(131072, false))
            .collect();
        assert_eq!(
            back,
            [Mark::Raise {
                bytes: 196608,
                fresh: false
            }]
        );
        assert_eq!(b.read_room(4096), 262144);
        b.timed_out();
        assert_eq!(b.after_read(180_224, false).map(|_| b.mark), Some(131072));
        // Ever slower, down to the floor: then the stream starts over.
        let mut marks = vec![];
        while b.deadline().is_some() {
            b.timed_out();
            if let Some(Mark::Raise { bytes, fresh }) = b.after_read(b.mark / 2, false) {
                assert!(bytes >= Batching::MIN_MARK && !fresh);
                marks.push(bytes);
            }
        }
        assert_eq!(
            marks,
            [49152],
            "131072 -> 49152; then 24576 would be under the floor"
        );
        assert_eq!(b.read_room(4096), 4096);
        // Few batches came before it gave up: a longer streak, then the full batch again.
        assert_eq!(stream(&mut b, 2 * Batching::STREAK), Some(196608));
        // A result's end (a few bytes by the deadline) lowers the mark for good.
        b.timed_out();
        assert_eq!(b.after_read(100, false), None);
        assert_eq!(b.deadline(), None);
        assert!(!b.stop());
    }

    #[test]
    fn a_complete_result_lowers_the_mark_and_ends_the_streak() {
        let mut b = Batching::new(196608);
        assert!(stream(&mut b, Batching::STREAK).is_some());
        assert_eq!(b.after_read(196608, false), None);
        // The last batch held the result's end: the next answer must not wait for a batch.
        assert_eq!(b.after_read(200_000, true), Some(Mark::Lower));
        assert_eq!(b.deadline(), None);
        assert!(!b.stop());
        // A tail of half a batch or more, read after the deadline, is still an end.
        assert!(stream(&mut b, Batching::STREAK).is_some());
        b.timed_out();
        assert_eq!(b.after_read(150_000, true), None);
        assert_eq!(b.deadline(), None);
        // Streaks do not run on from one result into the next.
        assert_eq!(stream(&mut b, Batching::STREAK - STREAMING_READ), None);
        assert_eq!(b.after_read(STREAMING_READ, true), None);
        assert_eq!(stream(&mut b, Batching::STREAK - STREAMING_READ), None);
    }

    #[test]
    fn a_slow_producer_needs_ever_longer_streaks() {
        let mut b = Batching::new(65536);
        assert!(stream(&mut b, Batching::STREAK).is_some());
        b.timed_out();
        // Fewer than a batch's half by the deadline: a stall, not a producer just behind.
        assert_eq!(b.after_read(STREAMING_READ, false), None);
        assert_eq!(stream(&mut b, Batching::STREAK), None);
        assert!(stream(&mut b, Batching::STREAK).is_some());
        for _ in 0..20 {
            b.timed_out();
            assert_eq!(b.after_read(100, false), None);
            let raised = (0..Batching::MAX_STREAK / STREAMING_READ)
                .find_map(|_| b.after_read(STREAMING_READ, false));
            assert!(matches!(raised, Some(Mark::Raise { fresh: true, .. })));
        }
        assert_eq!(b.needed, Batching::MAX_STREAK);
    }

    #[test]
    fn batches_in_time_grow_the_mark_up_to_the_setting() {
        let mut b = Batching::new(524288);
        assert_eq!(stream(&mut b, Batching::STREAK), Some(Batching::START));
        let mut marks = vec![];
        for _ in 0..10 * Batching::KEEPING_UP {
            if let Some(Mark::Raise { bytes, fresh }) = b.after_read(b.mark, false) {
                assert!(!fresh, "growing is not a new stream");
                marks.push(bytes);
            }
        }
        assert_eq!(
            marks,
            [294912, 442368, 524288],
            "by half each time, then the setting"
        );
        assert_eq!(b.read_room(131072), 524288 + 524288 / 3);
        // Late: about 300 KB per deadline. The late rule takes the mark down to what
        // arrives, and growing starts again from there.
        b.timed_out();
        assert_eq!(b.after_read(300_000, false), again(221184));
        // It grows no further in this stream: past what arrived per deadline, each batch
        // would wait for one again.
        assert!((0..10 * Batching::KEEPING_UP).all(|_| b.after_read(221184, false).is_none()));
        // Slower still: down, and the first batch is the most it comes back to.
        b.timed_out();
        assert_eq!(b.after_read(150_000, false), again(106496));
        let back: Vec<_> = (0..10 * Batching::KEEPING_UP)
            .filter_map(|_| b.after_read(106496, false))
            .collect();
        assert_eq!(
            back,
            [Mark::Raise {
                bytes: Batching::START,
                fresh: false
            }]
        );
        // A complete result ends it; the next stream starts from the first batch and may
        // grow to the setting again.
        assert_eq!(b.after_read(1000, true), Some(Mark::Lower));
        assert_eq!(stream(&mut b, Batching::STREAK), Some(Batching::START));
        let regrown = (0..Batching::KEEPING_UP).find_map(|_| b.after_read(b.mark, false));
        assert_eq!(regrown, again(294912));
        // A setting below the first batch is the only batch.
        let mut small = Batching::new(65536);
        assert_eq!(stream(&mut small, Batching::STREAK), Some(65536));
        assert!((0..100).all(|_| small.after_read(65536, false).is_none()));
    }

    #[test]
    fn off_never_batches() {
        let mut b = Batching::new(0);
        assert_eq!(stream(&mut b, 100 << 20), None);
        assert_eq!(b.deadline(), None);
        b.timed_out();
        assert!(!b.stop());
    }
}
