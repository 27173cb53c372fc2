//! Copies a blob stream into small pieces of its own, so the HTTP client's read buffer is
//! released as soon as a chunk is taken.
//!
//! hyper hands out body chunks as slices of its connection read buffer, which grows to
//! about 400 KiB on a fast stream. While a chunk is still queued on the upload connection,
//! the buffer is shared, so hyper's next read allocates a fresh ~400 KiB buffer, and an
//! idle pooled connection keeps the last one. That churn, not the layer size, was most of
//! the ~2 MiB of peak memory per concurrent transfer (found with valgrind's dhat in the
//! `big` benchmark). Copying each chunk out at once (a memcpy, cheap next to hashing it)
//! leaves the read buffer unshared, so hyper reuses it in place; and pieces of
//! [`PIECE`] bytes bound what the upload connection queues (hyper queues at most 16
//! buffers) to a few hundred KiB, in allocations small enough for malloc to recycle.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Size of the pieces a chunk is copied into.
pub const PIECE: usize = 16 << 10;

/// A stream of `Bytes` re-cut into owned pieces of at most [`PIECE`] bytes.
pub struct Rechunk<S> {
    inner: S,
    pending: VecDeque<Bytes>,
}

impl<S> Rechunk<S> {
    /// Wraps `inner`; errors pass through unchanged.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: VecDeque::new(),
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
                return Poll::Ready(Some(Ok(piece)));
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                // Every piece is copied now, so `chunk` (and hyper's buffer) goes at once;
                // an empty chunk yields nothing and the loop polls on.
                Poll::Ready(Some(Ok(chunk))) => this
                    .pending
                    .extend(chunk.chunks(PIECE).map(Bytes::copy_from_slice)),
                other => return other,
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
        let out: Vec<_> = Rechunk::new(futures_util::stream::iter(items))
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
    }
}
