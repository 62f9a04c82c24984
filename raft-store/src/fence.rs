//! Leader fencing across the client API (DESIGN.md rule 4).
//!
//! A controller sends its writes with the [`HEADER`] `skiff-fence-term: <term>`, the raft term
//! of the leadership it read under. [`FenceLayer`] scopes every request on the client listener
//! with what that header says, and [`crate::Master::propose`] proposes a write made within
//! such a request only on this master, only while it leads in that term, with the term in the
//! log entry so the state machine refuses it if the entry lands in any other term. Requests
//! without the header (users, node daemons, etcd tools) are not touched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The request header a fenced write carries.
pub const HEADER: &str = skiff_proto::FENCE_HEADER;

/// What the current request's [`HEADER`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// No header: an ordinary write.
    None,
    /// Write only within this leadership term.
    Term(u64),
    /// A header that is not a term: its writes are refused with this message.
    Invalid(String),
}

tokio::task_local! {
    static FENCE: Fence;
}

/// The fence of the request being served (`Fence::None` outside a request).
pub fn current() -> Fence {
    FENCE.try_with(Clone::clone).unwrap_or(Fence::None)
}

/// Runs `fut` as part of a request fenced by `fence`.
pub async fn scope<F: Future>(fence: Fence, fut: F) -> F::Output {
    FENCE.scope(fence, fut).await
}

/// Reads [`HEADER`] from request headers.
pub fn from_headers(headers: &http::HeaderMap) -> Fence {
    let Some(value) = headers.get(HEADER) else {
        return Fence::None;
    };
    match value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(term) => Fence::Term(term),
        None => Fence::Invalid(format!("header {HEADER}: {value:?} is not a raft term (an unsigned integer)")),
    }
}

/// A tower layer scoping each request with its [`Fence`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FenceLayer;

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FenceService<S>;

    fn layer(&self, inner: S) -> FenceService<S> {
        FenceService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct FenceService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for FenceService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fence = from_headers(req.headers());
        Box::pin(scope(fence, self.inner.call(req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(v) = v {
            h.insert(HEADER, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_header_names_a_term_or_is_refused_by_name() {
        assert_eq!(from_headers(&headers(None)), Fence::None);
        assert_eq!(from_headers(&headers(Some("17"))), Fence::Term(17));
        match from_headers(&headers(Some("seven"))) {
            Fence::Invalid(msg) => assert!(msg.contains(HEADER) && msg.contains("seven"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_fence_holds_only_inside_its_scope() {
        assert_eq!(current(), Fence::None);
        let inside = scope(Fence::Term(3), async { current() }).await;
        assert_eq!(inside, Fence::Term(3));
        assert_eq!(current(), Fence::None);
    }
}
