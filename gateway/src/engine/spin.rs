//! Busy-polling before a worker sleeps (`[server] busy_poll_us`).
//!
//! A small query crosses the gateway twice, and on a machine where the gateway has
//! gone to sleep each crossing costs a sleep and a wake-up (a context switch, and on a
//! VM an inter-processor interrupt) before any relay code runs: that, not the relay, is
//! most of the latency a proxy adds to `SELECT 1`. When the worker runs out of work it
//! therefore first watches the sockets its sessions are waiting on for a few
//! microseconds, yielding the CPU to anything else runnable between looks, and only
//! then lets tokio sleep in `epoll_wait`. An answer that arrives meanwhile is then
//! picked up without a wake-up.
//!
//! Only sockets a session is actually waiting to read are watched: a held statement's
//! client is not (its session reads nothing until the decision). While any session of the
//! worker is in the middle of a stream (its last read was a full 8 KiB flush of a large
//! result or a COPY, or a write waits for a full socket to drain), the worker does not
//! spin at all: the next chunk is the server's work away, and the looks would take CPU
//! from it (measured: +40-70% gateway CPU per GB). Each look that finds nothing halves
//! the next budget, so agents that pause between statements cost a few microseconds per
//! pause, not the whole budget; a read that completes soon after a look gave up restores
//! it.
//!
//! An epoll worker looks at the watched sockets; an io_uring worker, whose reads are
//! already with the kernel, looks at its completion queue (see [`super::ring`]).
//!
//! It is off by default (README, "Busy-polling"): where the CPU is saturated (8 clients
//! on 2 cores) the looks cost gateway CPU the database could have used.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Past this many watched sockets the worker is busy anyway, and polling them all
/// between looks would cost more than the wake-up it saves.
const MAX_WATCHED: usize = 64;

/// Halvings of the budget after looks that found nothing, so a gateway whose agents pause
/// between statements stops spending the budget on every wait.
const MAX_MISSES: u32 = 5;

#[derive(Default)]
struct State {
    /// Sockets awaited after a short read: a round trip's answer or the next statement.
    fds: Vec<libc::pollfd>,
    /// Reads awaited in the middle of a stream, and writes waiting for a full socket:
    /// while there is one, the worker does not spin at all.
    streaming: usize,
    misses: u32,
    /// When the last look gave up, and its full budget: a read that completes soon after
    /// shows a longer look would have found it, and the budget is restored.
    gave_up: Option<(Instant, Duration)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// Set by a worker that busy-polls: elsewhere (busy polling off, the side-query
    /// threads) a wait costs no bookkeeping at all.
    static ENABLED: Cell<bool> = const { Cell::new(false) };
}

/// Makes this thread's waits watched: called by a worker whose runtime calls
/// [`before_park`].
pub fn enable() {
    ENABLED.with(|e| e.set(true));
}

/// A read this thread's runtime is waiting for, for as long as the guard lives.
pub struct Watched {
    fd: RawFd,
    streaming: bool,
}

/// Marks `fd` as awaited by a read on this thread; `streaming` after a read of at least
/// [`super::STREAMING_READ`] bytes, or for a write waiting on a full socket. `None` where this
/// thread does not busy-poll.
pub fn watch(fd: RawFd, streaming: bool) -> Option<Watched> {
    if !ENABLED.with(Cell::get) {
        return None;
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if streaming {
            s.streaming += 1;
        } else {
            s.fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            });
        }
    });
    Some(Watched { fd, streaming })
}

impl Drop for Watched {
    fn drop(&mut self) {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            if self.streaming {
                s.streaming -= 1;
            } else if let Some(i) = s.fds.iter().position(|p| p.fd == self.fd) {
                s.fds.swap_remove(i);
            }
            if let Some((at, full)) = s.gave_up.take()
                && at.elapsed() < full * 2
            {
                s.misses = 0;
            }
        });
    }
}

/// Called by an epoll runtime before it sleeps: returns once a watched socket is readable
/// or the budget has passed.
pub fn before_park(base: Duration) {
    look(base, |fds| {
        // SAFETY: a valid, exclusively borrowed array of pollfds; timeout 0, so poll
        // only fills in `revents`.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) != 0 }
    });
}

/// Looks with `found` until it finds something or the budget (`base`, halved for each
/// recent look that found nothing) has passed; not at all while nothing is watched or a
/// stream is under way. The io_uring engine looks at its completion queue instead of
/// the sockets.
pub fn look(base: Duration, mut found: impl FnMut(&mut [libc::pollfd]) -> bool) {
    STATE.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        let s = &mut *s;
        if s.fds.is_empty() || s.fds.len() > MAX_WATCHED || s.streaming > 0 {
            return;
        }
        let start = Instant::now();
        let budget = base / (1 << s.misses);
        loop {
            if found(&mut s.fds) {
                s.misses = 0;
                s.gave_up = None;
                return;
            }
            if start.elapsed() >= budget {
                s.misses = (s.misses + 1).min(MAX_MISSES);
                s.gave_up = Some((Instant::now(), base));
                return;
            }
            // Whatever else wants this CPU (the database, the agent) runs first.
            // SAFETY: no preconditions.
            unsafe { libc::sched_yield() };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn nothing_is_watched_where_busy_polling_is_off() {
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(watch(b.as_raw_fd(), false).is_none());
        STATE.with(|s| assert!(s.borrow().fds.is_empty()));
    }

    #[test]
    fn returns_as_soon_as_a_watched_socket_is_readable() {
        enable();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let _w = watch(b.as_raw_fd(), false);
        a.write_all(b"x").unwrap();
        let t = Instant::now();
        before_park(Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn gives_up_after_the_budget_and_forgets_dropped_sockets() {
        enable();
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        {
            let _w = watch(b.as_raw_fd(), false);
            before_park(Duration::from_millis(5));
            STATE.with(|s| assert_eq!(s.borrow().fds.len(), 1));
        }
        STATE.with(|s| assert!(s.borrow().fds.is_empty()));
        // Nothing watched: no spinning at all.
        let t = Instant::now();
        before_park(Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_stream_in_progress_stops_the_looks_and_misses_shrink_the_budget() {
        enable();
        let (_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (_c, d) = std::os::unix::net::UnixStream::pair().unwrap();
        let _w = watch(b.as_raw_fd(), false);
        {
            let _s = watch(d.as_raw_fd(), true);
            let t = Instant::now();
            before_park(Duration::from_secs(30));
            assert!(t.elapsed() < Duration::from_secs(10));
        }
        for _ in 0..8 {
            before_park(Duration::from_millis(2));
        }
        STATE.with(|s| assert_eq!(s.borrow().misses, MAX_MISSES));
    }
}
