//! Copies a blob stream into small pieces of its own, so the HTTP client's read buffer is
//! released as soon as a chunk is taken, and bounds the bytes copied out but not yet taken
//! by the uploads, across the transfers of one image copy.
//!
//! hyper hands out body chunks as slices of its connection read buffer, which grows to
//! about 500 KiB on a fast stream (reqwest does not let us cap it). While a chunk is still
//! queued on the upload connection, the buffer is shared, so hyper's next read allocates a
//! fresh buffer, and an idle pooled connection keeps the last one. That churn, not the
//! layer size, was most of the ~2 MiB of peak memory per concurrent transfer (found with
//! valgrind's dhat in the `big` benchmark). Copying each chunk out at once (a memcpy,
//! cheap next to hashing it) leaves the read buffer unshared, so hyper reuses it in place;
//! and pieces of [`PIECE`] bytes bound what the upload connection queues (hyper queues at
//! most 16 buffers) to 64 KiB, in allocations small enough for malloc to recycle.
//!
//! A whole chunk is copied at once, so until the upload has taken its pieces a transfer
//! holds two chunks: its copy and hyper's read-ahead of the next one, ~1 MiB. With six
//! large transfers blocked on a slow target that was the larger part of the service's
//! peak (doc/perf.md, issue 18). A [`Budget`] shared by the transfers of one image copy
//! caps the copied bytes not yet taken: a transfer takes its next chunk only once it has
//! reserved room for it, and waits otherwise, its next chunk staying in hyper's buffer and
//! its upload fed from the kernel's socket buffer meanwhile. One image's, not the
//! service's: an upload stalled by a slow target holds its room until it moves, and that
//! must hold back only the copy that goes to that target, never another sync.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// Blob bytes one image copy may hold copied out of its source chunks and not yet taken
/// by the uploads: two of hyper's largest chunks. Above that, a transfer's next chunk
/// waits in hyper's read buffer, and its upload is fed from the kernel's socket buffer,
/// which holds far more than this on any real connection.
pub const COPY_BUDGET: usize = 1 << 20;

/// Size of the pieces a chunk is copied into.
pub const PIECE: usize = 4 << 10;

/// Room reserved before a chunk is taken: the largest chunk hyper's read buffer holds
/// (it grows to 408 KiB, in a 512 KiB allocation). A larger chunk is taken all the same,
/// over the budget, so a transfer never waits for room the budget cannot give.
pub const CHUNK_RESERVE: usize = 512 << 10;

/// Bytes copied out of source chunks and not yet taken by their uploads, shared by the
/// transfers of one image copy.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    reserve: usize,
}

impl Budget {
    /// A budget of `bytes` (at least one piece).
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.max(PIECE);
        Self {
            bytes: Arc::new(Semaphore::new(bytes)),
            reserve: CHUNK_RESERVE.min(bytes),
        }
    }

    /// Bytes of the budget free right now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// A stream of `Bytes` re-cut into owned pieces of at most [`PIECE`] bytes.
pub struct Rechunk<S> {
    inner: S,
    pending: VecDeque<Bytes>,
    room: PollSemaphore,
    reserve: u32,
    /// Budget held for the pieces in `pending` (or reserved for the next chunk).
    held: Option<OwnedSemaphorePermit>,
}

impl<S> Rechunk<S> {
    /// Wraps `inner`, copying within `budget`; errors pass through unchanged.
    pub fn new(inner: S, budget: &Budget) -> Self {
        Self {
            inner,
            pending: VecDeque::new(),
            room: PollSemaphore::new(budget.bytes.clone()),
            reserve: u32::try_from(budget.reserve).unwrap_or(u32::MAX),
            held: None,
        }
    }

    /// Gives back the budget held for `n` bytes (all of it when fewer are held).
    fn release(&mut self, n: usize) {
        if let Some(held) = self.held.as_mut() {
            if held.num_permits() > n {
                drop(held.split(n));
            } else {
                self.held = None;
            }
        }
    }
}

impl<S, E> Stream for Rechunk<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(piece) = this.pending.pop_front() {
                this.release(piece.len());
                if this.pending.is_empty() {
                    this.held = None;
                }
                return Poll::Ready(Some(Ok(piece)));
            }
            if this.held.is_none() {
                match this.room.poll_acquire_many(cx, this.reserve) {
                    Poll::Ready(permit) => this.held = permit,
                    Poll::Pending => return Poll::Pending,
                }
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                // Every piece is copied now, so `chunk` (and hyper's buffer) goes at once;
                // an empty chunk yields nothing and the loop polls on.
                Poll::Ready(Some(Ok(chunk))) => {
                    let unused = (this.reserve as usize).saturating_sub(chunk.len());
                    this.release(unused);
                    this.pending
                        .extend(chunk.chunks(PIECE).map(Bytes::copy_from_slice));
                }
                other => {
                    // Nothing to copy yet (or ever): the room goes back to others, so a
                    // transfer waiting on its source holds none of the budget.
                    this.held = None;
                    return other;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn pieces_keep_the_bytes_and_order_and_pass_errors() {
        let big: Vec<u8> = (0..(PIECE * 2 + 5)).map(|i| i as u8).collect();
        let items: Vec<Result<Bytes, &str>> = vec![
            Ok(Bytes::from(big.clone())),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"tail")),
            Err("cut"),
        ];
        let budget = Budget::new(1 << 20);
        let out: Vec<_> = Rechunk::new(futures_util::stream::iter(items), &budget)
            .collect()
            .await;
        let sizes: Vec<_> = out
            .iter()
            .map(|r| r.as_ref().map(Bytes::len).map_err(|e| *e))
            .collect();
        assert_eq!(sizes, vec![Ok(PIECE), Ok(PIECE), Ok(5), Ok(4), Err("cut")]);
        let joined: Vec<u8> = out
            .iter()
            .take(3)
            .flat_map(|r| r.as_ref().unwrap().to_vec())
            .collect();
        assert_eq!(joined, big);
        assert_eq!(budget.available(), 1 << 20, "all the budget is given back");
    }

    #[tokio::test]
    async fn budget_is_held_for_pieces_not_yet_taken_and_given_back_as_they_go() {
        let budget = Budget::new(CHUNK_RESERVE * 2);
        let chunk = Bytes::from(vec![7u8; PIECE * 3]);
        let mut stream = Rechunk::new(
            futures_util::stream::iter(vec![Ok::<_, ()>(chunk)]),
            &budget,
        );
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.len(), PIECE);
        // Two pieces copied and not yet taken; the unused reserve went back at once.
        assert_eq!(budget.available(), CHUNK_RESERVE * 2 - PIECE * 2);
        stream.next().await.unwrap().unwrap();
        stream.next().await.unwrap().unwrap();
        assert_eq!(budget.available(), CHUNK_RESERVE * 2);
        assert!(stream.next().await.is_none());
        assert_eq!(budget.available(), CHUNK_RESERVE * 2);
    }

    #[tokio::test]
    async fn a_transfer_waits_for_room_and_goes_on_when_another_gives_it_back() {
        // Room for one reserve only: the second stream must not take its chunk (and so
        // not copy it) until the first has handed its pieces on.
        let budget = Budget::new(CHUNK_RESERVE);
        let one = Bytes::from(vec![1u8; CHUNK_RESERVE]);
        let mut a = Rechunk::new(futures_util::stream::iter(vec![Ok::<_, ()>(one)]), &budget);
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = taken.clone();
        let b_source = futures_util::stream::once(async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(Bytes::from(vec![2u8; PIECE]))
        });
        let mut b = Rechunk::new(Box::pin(b_source), &budget);
        a.next().await.unwrap().unwrap();
        assert_eq!(
            budget.available(),
            PIECE,
            "a holds the room of its pieces not yet taken"
        );
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut b).poll_next(&mut cx).is_pending());
        assert!(
            !taken.load(std::sync::atomic::Ordering::SeqCst),
            "b took its chunk without room for it"
        );
        // a's last pieces go; then b gets its room and its chunk. (a is not polled to
        // its end: that would first reserve room again, now b's.)
        for _ in 1..CHUNK_RESERVE / PIECE {
            a.next().await.unwrap().unwrap();
        }
        drop(a);
        let piece = tokio::time::timeout(std::time::Duration::from_secs(10), b.next())
            .await
            .expect("b got its room")
            .unwrap()
            .unwrap();
        assert_eq!(piece.len(), PIECE);
        assert!(taken.load(std::sync::atomic::Ordering::SeqCst));
        assert!(b.next().await.is_none());
        assert_eq!(budget.available(), CHUNK_RESERVE);
    }

    #[tokio::test]
    async fn a_chunk_larger_than_the_reserve_is_taken_over_the_budget() {
        let budget = Budget::new(PIECE);
        let chunk = Bytes::from(vec![3u8; PIECE * 4]);
        let out: Vec<_> = Rechunk::new(
            futures_util::stream::iter(vec![Ok::<_, ()>(chunk)]),
            &budget,
        )
        .collect()
        .await;
        assert_eq!(out.len(), 4);
        assert_eq!(budget.available(), PIECE);
    }
}
