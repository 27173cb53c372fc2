//! A blob stream that checks size and digest as the bytes pass, and withholds the last
//! bytes of a blob that does not match, so the target never receives a complete corrupt blob.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::registry::digest::Hasher;
use crate::registry::RegistryError;

/// Where the source side of a transfer records why it stopped, so the caller can report
/// the source's fault instead of the target's "connection broke".
pub type SourceFailure = Arc<Mutex<Option<RegistryError>>>;

/// Wraps a source blob body: passes chunks on, hashes them, and ends with an error on a
/// read failure, an overrun, a short body or a digest mismatch.
pub struct VerifyingStream<S> {
    inner: S,
    hasher: Option<Hasher>,
    expected: String,
    size: u64,
    seen: u64,
    registry: String,
    step: String,
    failure: SourceFailure,
    on_chunk: Option<ChunkHook>,
}

/// Called with the size of every chunk passed on, for progress displays.
pub type ChunkHook = Box<dyn Fn(u64) + Send + Sync>;

impl<S> VerifyingStream<S> {
    /// `inner` must yield exactly `size` bytes whose digest is `expected`.
    pub fn new(
        inner: S,
        expected: &str,
        size: u64,
        registry: &str,
        step: &str,
    ) -> (Self, SourceFailure) {
        let failure: SourceFailure = Arc::default();
        let stream = Self {
            inner,
            hasher: Some(Hasher::for_digest(expected)),
            expected: expected.to_owned(),
            size,
            seen: 0,
            registry: registry.to_owned(),
            step: step.to_owned(),
            failure: failure.clone(),
            on_chunk: None,
        };
        (stream, failure)
    }

    /// Reports every chunk that passes to `hook` (bytes handed to the target).
    pub fn on_chunk(mut self, hook: ChunkHook) -> Self {
        self.on_chunk = Some(hook);
        self
    }

    fn fail(&mut self, err: RegistryError) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let message = err.to_string();
        *self.failure.lock().expect("source failure lock") = Some(err);
        self.hasher = None;
        Poll::Ready(Some(Err(std::io::Error::other(message))))
    }

    fn protocol(&self, cause: String) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            step: self.step.clone(),
            cause,
        }
    }

    /// Checks the digest once every byte is in; `Err` means the last chunk must not go out.
    fn finish(&mut self) -> Result<(), RegistryError> {
        let actual = self.hasher.take().map(Hasher::finish).unwrap_or_default();
        if actual == self.expected {
            Ok(())
        } else {
            Err(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                step: self.step.clone(),
                expected: self.expected.clone(),
                actual,
            })
        }
    }
}

impl<S> Stream for VerifyingStream<S>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.hasher.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                let err = RegistryError::Network {
                    registry: this.registry.clone(),
                    step: this.step.clone(),
                    cause: crate::registry::describe_transport_error(&e),
                };
                this.fail(err)
            }
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if this.seen > this.size {
                    let err = this.protocol(format!(
                        "the source sent more than the {} bytes the manifest declares",
                        this.size
                    ));
                    return this.fail(err);
                }
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&chunk);
                }
                if this.seen == this.size {
                    if let Err(err) = this.finish() {
                        return this.fail(err);
                    }
                }
                if let Some(hook) = &this.on_chunk {
                    hook(chunk.len() as u64);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                if this.seen < this.size {
                    let err = this.protocol(format!(
                        "the source ended the blob after {} of {} bytes",
                        this.seen, this.size
                    ));
                    return this.fail(err);
                }
                Poll::Ready(None)
            }
        }
    }
}
