//! An unbounded channel that a plain thread can block on and async code can await, with
//! no runtime: the engine thread sends request outputs and KV event batches through it
//! to whichever kind of caller is listening.
//!
//! A receiver learns that the channel closed (every sender dropped) once it has taken
//! everything sent; a sender learns that the receiver is gone from a failed send.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receiver: bool,
    waker: Option<Waker>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    // Nothing panics while holding the lock, so a poisoned one still holds sound data.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, mut st: MutexGuard<'_, State<T>>) {
        let waker = st.waker.take();
        drop(st);
        self.ready.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A new channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { queue: VecDeque::new(), senders: 1, receiver: true, waker: None }),
        ready: Condvar::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// The sending half; cloneable.
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<T> Sender<T> {
    /// Queues `value`; gives it back when the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        let mut st = self.0.lock();
        if !st.receiver {
            return Err(value);
        }
        st.queue.push_back(value);
        self.0.wake(st);
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.0.lock().receiver
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.senders -= 1;
        if st.senders == 0 {
            self.0.wake(st);
        }
    }
}

/// The receiving half.
pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

impl<T> Receiver<T> {
    /// The next value, waiting for it; `None` once every sender is gone and the queue
    /// is drained.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next value (for hand-written futures and streams).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut st = self.0.lock();
        if let Some(v) = st.queue.pop_front() {
            return Poll::Ready(Some(v));
        }
        if st.senders == 0 {
            return Poll::Ready(None);
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The next value, blocking the calling thread for it; `None` once every sender is
    /// gone and the queue is drained. In async code, await [`recv`](Self::recv)
    /// instead: this would hold up the executor's thread.
    pub fn blocking_recv(&mut self) -> Option<T> {
        let mut st = self.0.lock();
        loop {
            if let Some(v) = st.queue.pop_front() {
                return Some(v);
            }
            if st.senders == 0 {
                return None;
            }
            st = self.0.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A value if one is queued now.
    pub fn try_recv(&mut self) -> Option<T> {
        self.0.lock().queue.pop_front()
    }

    /// Whether every sender is gone (values may still be queued).
    pub fn is_closed(&self) -> bool {
        self.0.lock().senders == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.receiver = false;
        // Dropped outside the lock: a value's own drop might use the channel.
        let queued = std::mem::take(&mut st.queue);
        drop(st);
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_arrive_in_order_then_the_channel_closes() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        let t = std::thread::spawn(move || {
            for i in 0..100 {
                assert!(tx2.send(i).is_ok());
            }
        });
        let mut got = Vec::new();
        while got.len() < 100 {
            got.extend(rx.blocking_recv());
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert!(t.join().is_ok());
        drop(tx);
        assert_eq!(rx.blocking_recv(), None);
        assert!(rx.is_closed());
    }

    #[test]
    fn a_send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = channel();
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(7), Err(7));
    }

    #[tokio::test]
    async fn awaiting_works_without_the_sender_knowing() {
        let (tx, mut rx) = channel();
        let t = std::thread::spawn(move || {
            let _ = tx.send("a");
            let _ = tx.send("b");
        });
        assert_eq!(rx.recv().await, Some("a"));
        assert_eq!(rx.recv().await, Some("b"));
        assert_eq!(rx.recv().await, None);
        assert!(t.join().is_ok());
    }
}
