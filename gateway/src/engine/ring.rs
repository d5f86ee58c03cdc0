//! The io_uring engine's reactor: one ring per worker thread, driven from inside that
//! worker's tokio current-thread runtime.
//!
//! Why not tokio-uring, which the engine ran on before: it submits in tokio's park hook
//! and learns of completions only when epoll reports the ring's descriptor readable, and
//! that hook is its own. So a send that completes while it is submitted (a socket with
//! room, the usual case) still costs an `epoll_wait` and a hop through its completion
//! task, and a worker cannot look for completions before it sleeps, which is what
//! busy-polling (`[server] busy_poll_us`, [`super::spin`]) needs. Here the park hook
//! ([`before_park`]) submits, hands out what has completed, and, where busy-polling is
//! on, watches the completion queue (memory shared with the kernel: no system call per
//! look) before tokio sleeps. The ring's descriptor is also registered with tokio, so a
//! completion that arrives while tokio sleeps wakes it.
//!
//! An operation is a future that owns what the kernel reads or writes (the buffer, the
//! address) until the kernel is done with it. One dropped before its completion hands
//! those to its slot, and asks the kernel to cancel it; they are freed when the
//! completion arrives, never while the kernel may still touch them.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue};
use slab::Slab;

/// Submission queue entries per ring (the completion queue is twice that, and the kernel
/// keeps overflowing completions rather than dropping them): more operations than this
/// can be in flight, they only take more submissions.
const ENTRIES: u32 = 1024;

/// `user_data` of cancellation requests, whose own completions say nothing anyone awaits.
const CANCEL: u64 = u64::MAX;

/// An operation's `user_data`: its slot's index, and in the high half a count of
/// operations started, so a completion or a cancellation meant for one operation never
/// reaches a later one that reuses the slot.
fn tag(index: usize, started: u32) -> u64 {
    (u64::from(started) << 32) | index as u64
}

enum Slot {
    Waiting(Option<Waker>),
    Done(i32),
    /// A dropped operation's buffer or address, kept until the kernel has finished with it.
    Orphan(#[allow(dead_code)] Box<dyn Any>),
}

struct Ring {
    uring: IoUring,
    /// Each slot with the `user_data` ([`tag`]) of the operation holding it.
    slots: Slab<(u64, Slot)>,
    /// Operations started, for the next [`tag`].
    started: u32,
    /// Entries pushed since the last submission.
    queued: bool,
    /// Wakers of operations just completed, woken once the ring is released; kept so a
    /// reap does not allocate.
    woken: Vec<Waker>,
}

thread_local! {
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

/// Creates this thread's ring and returns its descriptor, which the caller registers
/// with tokio ([`drive`]).
pub fn install() -> io::Result<RawFd> {
    let uring = IoUring::new(ENTRIES)?;
    let fd = uring.as_raw_fd();
    RING.with(|r| {
        *r.borrow_mut() = Some(Ring {
            uring,
            slots: Slab::with_capacity(256),
            started: 0,
            queued: false,
            woken: Vec::new(),
        })
    });
    Ok(fd)
}

/// Closes this thread's ring. Operations still in flight (there are none after a clean
/// shutdown: every socket was closed) keep their buffers forever rather than have the
/// kernel write into freed memory.
pub fn uninstall() {
    let ring = RING.with(|r| r.borrow_mut().take());
    if let Some(ring) = ring
        && !ring.slots.is_empty()
    {
        std::mem::forget(ring.slots);
        drop(ring.uring);
    }
}

fn with_ring<T>(f: impl FnOnce(&mut Ring) -> T) -> io::Result<T> {
    RING.try_with(|r| match r.try_borrow_mut() {
        Ok(mut r) => r.as_mut().map(f).ok_or_else(no_ring),
        Err(_) => Err(io::Error::other(
            "the io_uring reactor is busy (re-entered)",
        )),
    })
    .unwrap_or_else(|_| Err(no_ring()))
}

fn no_ring() -> io::Error {
    io::Error::other("no io_uring reactor on this thread")
}

impl Ring {
    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: whatever the entry points at is owned by its operation (or by the
            // slot it leaves behind) until the completion has been reaped.
            if unsafe { self.uring.submission().push(sqe) }.is_ok() {
                self.queued = true;
                return Ok(());
            }
            self.submit()?;
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        self.queued = false;
        loop {
            match self.uring.submit() {
                Ok(_) => return Ok(()),
                // The kernel holds completions it could not post: make room and retry.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.reap();
                    self.woken.drain(..).for_each(Waker::wake);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    self.queued = true;
                    return Err(e);
                }
            }
        }
    }

    /// Records every posted completion, gathering the wakers of the operations done.
    fn reap(&mut self) {
        let mut cq = self.uring.completion();
        cq.sync();
        for cqe in cq {
            let id = cqe.user_data();
            if id == CANCEL {
                continue;
            }
            let Ok(index) = usize::try_from(id & u64::from(u32::MAX)) else {
                continue;
            };
            let Some((owner, slot)) = self.slots.get_mut(index) else {
                continue;
            };
            if *owner != id {
                continue;
            }
            match slot {
                slot @ Slot::Waiting(_) => {
                    if let Slot::Waiting(Some(w)) =
                        std::mem::replace(slot, Slot::Done(cqe.result()))
                    {
                        self.woken.push(w);
                    }
                }
                Slot::Orphan(_) => {
                    self.slots.remove(index);
                }
                Slot::Done(_) => {}
            }
        }
    }

    fn has_completions(&mut self) -> bool {
        let mut cq = self.uring.completion();
        cq.sync();
        !cq.is_empty()
    }
}

/// Hands out whatever has completed. Wakers run after the ring is released: a woken task
/// may start another operation at once.
fn reap() {
    let Ok(mut woken) = with_ring(|r| {
        r.reap();
        std::mem::take(&mut r.woken)
    }) else {
        return;
    };
    woken.drain(..).for_each(Waker::wake);
    let _ = with_ring(|r| r.woken = woken);
}

/// Submits what is queued now rather than when the worker next sleeps.
pub fn flush() {
    if let Ok(Err(e)) = with_ring(|r| if r.queued { r.submit() } else { Ok(()) }) {
        tracing::error!("io_uring submission failed: {e}");
    }
}

/// Called by the runtime before it sleeps: submits what this tick queued, hands out what
/// completed meanwhile (tokio then does not sleep), and otherwise, where busy-polling is
/// on (`spin`), watches for a completion before tokio sleeps in `epoll_wait`.
pub fn before_park(spin: Duration) {
    flush();
    if !spin.is_zero() && !with_ring(Ring::has_completions).unwrap_or(true) {
        super::spin::look(spin, |_| with_ring(Ring::has_completions).unwrap_or(true));
    }
    reap();
}

/// Hands out completions whenever the ring's descriptor turns readable: a completion
/// that arrived while tokio slept in `epoll_wait`.
pub async fn drive(fd: RawFd) {
    struct Fd(RawFd);
    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0
        }
    }
    // SAFETY: the ring's descriptor stays open until `uninstall`, which runs after this
    // task's runtime (and with it this registration) is gone.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE)
    };
    let afd = match registered {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("cannot watch the io_uring descriptor: {e}");
            return;
        }
    };
    loop {
        match afd.readable().await {
            Ok(mut g) => {
                g.clear_ready();
                reap();
            }
            Err(e) => {
                tracing::error!("watching the io_uring descriptor: {e}");
                return;
            }
        }
    }
}

/// One operation in flight, owning `T` (the memory the kernel reads or writes) until its
/// completion: resolves to the kernel's result (a count, or `-errno`) and `T` back.
pub struct Op<T: Any + Unpin> {
    index: usize,
    tag: u64,
    data: Option<T>,
}

impl<T: Any + Unpin> Op<T> {
    /// Queues `sqe`, which points into `data`, for the next submission; where it cannot
    /// be queued, `data` comes back with the error.
    fn start(data: T, sqe: squeue::Entry) -> Result<Op<T>, (io::Error, T)> {
        let queued = with_ring(|r| {
            r.started = r.started.wrapping_add(1);
            let entry = r.slots.vacant_entry();
            let (index, user_data) = (entry.key(), tag(entry.key(), r.started));
            entry.insert((user_data, Slot::Waiting(None)));
            match r.push(&sqe.user_data(user_data)) {
                Ok(()) => Ok((index, user_data)),
                Err(e) => {
                    r.slots.remove(index);
                    Err(e)
                }
            }
        });
        match queued {
            Ok(Ok((index, tag))) => Ok(Op {
                index,
                tag,
                data: Some(data),
            }),
            Ok(Err(e)) | Err(e) => Err((e, data)),
        }
    }
}

impl<T: Any + Unpin> Future for Op<T> {
    type Output = (i32, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, T)> {
        let this = self.get_mut();
        let done = with_ring(|r| match r.slots.get_mut(this.index).map(|(_, s)| s) {
            Some(Slot::Done(res)) => {
                let res = *res;
                r.slots.remove(this.index);
                Some(res)
            }
            Some(Slot::Waiting(w)) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                None
            }
            // Only a dropped operation leaves an orphan, and it is not polled again.
            Some(Slot::Orphan(_)) | None => Some(-libc::ECANCELED),
        });
        match done {
            Ok(Some(res)) => match this.data.take() {
                Some(data) => Poll::Ready((res, data)),
                None => Poll::Pending,
            },
            Ok(None) => Poll::Pending,
            // The reactor is gone: the thread is ending, nothing will complete.
            Err(_) => Poll::Pending,
        }
    }
}

impl<T: Any + Unpin> Drop for Op<T> {
    fn drop(&mut self) {
        let mut data = self.data.take();
        if data.is_none() {
            return;
        }
        let reached = with_ring(|r| match r.slots.get_mut(self.index).map(|(_, s)| s) {
            Some(slot @ Slot::Waiting(_)) => {
                if let Some(d) = data.take() {
                    *slot = Slot::Orphan(Box::new(d));
                }
                let cancel = opcode::AsyncCancel::new(self.tag).build().user_data(CANCEL);
                // Submitted at once, so a read abandoned on an idle socket is gone
                // before anything else arrives there. What reached it first is lost with
                // it, as with any abandoned read on io_uring: the engine abandons reads
                // only on connections it then closes. Where the queue cannot take the
                // cancel, the orphan waits for its own completion, which shutting its
                // socket down brings. The cancel names this operation's tag, so if it
                // goes out late, after the slot has passed to another, it finds nothing.
                if r.push(&cancel).is_ok() {
                    let _ = r.submit();
                }
            }
            Some(Slot::Done(_)) => {
                r.slots.remove(self.index);
            }
            Some(Slot::Orphan(_)) | None => {}
        });
        if let Some(d) = data
            && reached.is_err()
        {
            // No reactor to ask whether the kernel is done with this memory: keep it.
            std::mem::forget(d);
        }
    }
}

/// Turns a completion's result into a count or the error it carries.
fn result(res: i32) -> io::Result<usize> {
    usize::try_from(res).map_err(|_| io::Error::from_raw_os_error(-res))
}

/// Receives into `buf`'s spare capacity; the count is added to its length.
pub async fn recv(fd: RawFd, mut buf: bytes::BytesMut) -> (io::Result<usize>, bytes::BytesMut) {
    let room = buf.capacity() - buf.len();
    let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let len = u32::try_from(room).unwrap_or(u32::MAX);
    let sqe = opcode::Recv::new(io_uring::types::Fd(fd), ptr, len).build();
    let op = match Op::start(buf, sqe) {
        Ok(op) => op,
        Err((e, buf)) => return (Err(e), buf),
    };
    let (res, mut buf) = op.await;
    let n = result(res);
    if let Ok(n) = n {
        // SAFETY: the kernel initialised these `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n.min(room)) };
    }
    (n, buf)
}

/// Waits until `fd` is readable as its socket reckons it: for TCP, once `SO_RCVLOWAT`
/// bytes have arrived (or the peer hung up). A receive submitted to a socket that has
/// anything at all takes it at once, whatever the mark, so a read meant to gather a
/// batch waits here first.
pub async fn readable(fd: RawFd) -> io::Result<()> {
    let sqe = opcode::PollAdd::new(
        io_uring::types::Fd(fd),
        (libc::POLLIN | libc::POLLRDHUP) as u32,
    )
    .build();
    let (res, ()) = Op::start((), sqe).map_err(|(e, ())| e)?.await;
    result(res).map(drop)
}

/// Sends from `data[off..]`, returning how much went.
pub async fn send(fd: RawFd, data: bytes::Bytes, off: usize) -> (io::Result<usize>, bytes::Bytes) {
    let rest = &data[off.min(data.len())..];
    let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
    let sqe = opcode::Send::new(io_uring::types::Fd(fd), rest.as_ptr(), len)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    match Op::start(data, sqe) {
        Ok(op) => {
            let (res, data) = op.await;
            (result(res), data)
        }
        Err((e, data)) => (Err(e), data),
    }
}

/// Accepts a connection on a listening socket, returning the new descriptor.
pub async fn accept(fd: RawFd) -> io::Result<RawFd> {
    let sqe = opcode::Accept::new(
        io_uring::types::Fd(fd),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .flags(libc::SOCK_CLOEXEC)
    .build();
    let (res, ()) = Op::start((), sqe).map_err(|(e, ())| e)?.await;
    result(res).map(|fd| fd as RawFd)
}

/// Connects `fd` to `addr`.
pub async fn connect(fd: RawFd, addr: socket2::SockAddr) -> io::Result<()> {
    let addr = Box::new(addr);
    let sqe = opcode::Connect::new(io_uring::types::Fd(fd), addr.as_ptr(), addr.len()).build();
    let (res, _addr) = Op::start(addr, sqe).map_err(|(e, _)| e)?.await;
    result(res).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::FromRawFd;

    /// Runs `f` on a worker-shaped thread: a ring, a current-thread runtime whose park hook
    /// is [`before_park`], and the completion task. Reports how many slots were left.
    fn on_ring<T>(spin: Duration, f: impl Future<Output = T>) -> (T, usize) {
        let fd = install().unwrap();
        if !spin.is_zero() {
            super::super::spin::enable();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || before_park(spin))
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let out = local.block_on(&rt, async {
            tokio::task::spawn_local(drive(fd));
            f.await
        });
        drop(local);
        drop(rt);
        let left = with_ring(|r| r.slots.len()).unwrap();
        uninstall();
        (out, left)
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn accepts_connects_and_carries_bytes_exactly_both_ways() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // 4 MiB: more than a socket holds, so sends complete in parts while the reader runs.
        let data: Bytes = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let ((got, echoed), left) = on_ring(Duration::ZERO, async move {
            let accept = accept(l.as_raw_fd());
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let (accepted, connected) =
                tokio::join!(accept, connect(sock.as_raw_fd(), addr.into()));
            connected.unwrap();
            let server = accepted.unwrap();
            let writer = async {
                let mut off = 0;
                let mut data = sent;
                while off < data.len() {
                    let (n, d) = send(sock.as_raw_fd(), data, off).await;
                    data = d;
                    off += n.unwrap();
                }
                let (n, _) = send(sock.as_raw_fd(), Bytes::from_static(b"!"), 0).await;
                assert_eq!(n.unwrap(), 1);
            };
            let reader = async {
                let mut buf = BytesMut::new();
                while buf.len() < (4 << 20) + 1 {
                    buf.reserve(64 << 10);
                    let (n, b) = recv(server, buf).await;
                    buf = b;
                    assert_ne!(n.unwrap(), 0, "early EOF");
                }
                buf
            };
            let ((), got) = tokio::join!(writer, reader);
            // SAFETY: a descriptor accept returned, owned here.
            let server = unsafe { std::net::TcpStream::from_raw_fd(server) };
            let (n, _) = send(server.as_raw_fd(), Bytes::from_static(b"back"), 0).await;
            n.unwrap();
            let (n, echoed) = recv(sock.as_raw_fd(), BytesMut::with_capacity(16)).await;
            assert_eq!(n.unwrap(), 4);
            (got, echoed)
        });
        assert!(got[..4 << 20] == data[..], "the bytes differ");
        assert_eq!(&got[4 << 20..], b"!");
        assert_eq!(&echoed[..], b"back");
        assert_eq!(left, 0, "every slot was freed");
    }

    #[test]
    fn a_read_abandoned_before_anything_arrived_takes_none_of_what_comes_later() {
        let (mut a, b) = pair();
        let ((first, second), left) = on_ring(Duration::ZERO, async move {
            let abandoned = tokio::time::timeout(
                Duration::from_millis(20),
                recv(b.as_raw_fd(), BytesMut::with_capacity(64)),
            )
            .await;
            assert!(abandoned.is_err(), "nothing was sent yet");
            a.write_all(b"hello").unwrap();
            let (n, buf) = recv(b.as_raw_fd(), BytesMut::with_capacity(64)).await;
            let first = (n.unwrap(), buf);
            drop(a);
            let (n, _) = recv(b.as_raw_fd(), BytesMut::with_capacity(64)).await;
            (first, n.unwrap())
        });
        assert_eq!(&first.1[..], b"hello", "the cancelled read took the bytes");
        assert_eq!(first.0, 5);
        assert_eq!(second, 0, "the peer's close reads as 0");
        assert_eq!(
            left, 0,
            "the cancelled read's buffer was freed at its completion"
        );
    }

    #[test]
    fn a_completion_reaches_only_the_operation_it_was_meant_for() {
        // A completion tagged for an earlier holder of a slot (a late cancellation's
        // target, say) must not complete the operation that holds the slot now.
        install().unwrap();
        let nop = |tag| opcode::Nop::new().build().user_data(tag);
        let index = with_ring(|r| {
            r.started += 1;
            let index = r.slots.insert((tag(0, 0), Slot::Waiting(None)));
            r.slots[index].0 = tag(index, r.started);
            r.push(&nop(tag(index, r.started - 1))).unwrap();
            r.uring.submit_and_wait(1).unwrap();
            r.reap();
            index
        })
        .unwrap();
        let state = |r: &mut Ring| matches!(r.slots[index].1, Slot::Waiting(_));
        assert!(with_ring(state).unwrap(), "a stale tag completed the slot");
        let done = with_ring(|r| {
            r.push(&nop(r.slots[index].0)).unwrap();
            r.uring.submit_and_wait(1).unwrap();
            r.reap();
            matches!(r.slots.remove(index).1, Slot::Done(0))
        })
        .unwrap();
        assert!(done, "its own tag completes it");
        uninstall();
    }

    #[test]
    fn failures_are_errors_not_panics() {
        let (res, _) = on_ring(Duration::ZERO, async {
            // A port nobody listens on.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            drop(l);
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let refused = connect(sock.as_raw_fd(), addr.into()).await;
            let (a, b) = pair();
            drop(b);
            a.shutdown(std::net::Shutdown::Write).unwrap();
            let (sent, _) = send(a.as_raw_fd(), Bytes::from_static(b"x"), 0).await;
            let (bad, _) = recv(-1, BytesMut::with_capacity(8)).await;
            (refused, sent, bad)
        });
        assert_eq!(res.0.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(res.1.unwrap_err().raw_os_error(), Some(libc::EPIPE));
        assert_eq!(res.2.unwrap_err().raw_os_error(), Some(libc::EBADF));
        // Off a worker thread there is no reactor: an error, not a panic or a hang.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (res, _) = rt.block_on(recv(0, BytesMut::with_capacity(8)));
        assert!(res.unwrap_err().to_string().contains("no io_uring reactor"));
    }

    #[test]
    fn busy_polling_sees_an_answer_that_arrives_while_it_looks() {
        let (mut a, b) = pair();
        let started = std::time::Instant::now();
        // A budget far longer than the answer takes: the look must end on the completion.
        let ((n, buf), left) = on_ring(Duration::from_secs(30), async move {
            let _watched = super::super::spin::watch(b.as_raw_fd(), false);
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                a.write_all(b"answer").unwrap();
                let mut rest = Vec::new();
                let _ = a.read_to_end(&mut rest);
            });
            let out = recv(b.as_raw_fd(), BytesMut::with_capacity(64)).await;
            drop(b);
            writer.join().unwrap();
            out
        });
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the look ran out its budget instead of seeing the completion"
        );
        assert_eq!(n.unwrap(), 6);
        assert_eq!(&buf[..], b"answer");
        assert_eq!(left, 0);
    }
}
