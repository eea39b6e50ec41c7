//! The request size limit's answer. tonic refuses a request message over the services'
//! `max_decoding_message_size` before any handler runs, with a bare `OUT_OF_RANGE`; this layer
//! turns that into the gateway's `RESOURCE_EXHAUSTED` (`REQUEST_TOO_LARGE`, with `ErrorInfo`).
//! The gateway itself never answers `OUT_OF_RANGE` (no `Reason` maps to it) and always attaches
//! details, so a detail-less `OUT_OF_RANGE` in a trailers-only response is tonic's size check.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Code;
use tonic::body::Body;

use crate::api::error::{Reason, status};

#[derive(Clone, Copy, Debug)]
pub struct RequestSizeLayer {
    max_bytes: usize,
}

impl RequestSizeLayer {
    /// `max_bytes` is the limit the services were given (named in the answer).
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<S> tower_layer::Layer<S> for RequestSizeLayer {
    type Service = RequestSizeService<S>;

    fn layer(&self, inner: S) -> RequestSizeService<S> {
        RequestSizeService {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestSizeService<S> {
    inner: S,
    max_bytes: usize,
}

fn is_size_refusal(headers: &http::HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|v| Code::from_bytes(v.as_bytes()) == Code::OutOfRange)
        && !headers.contains_key("grpc-status-details-bin")
}

impl<S> tower_service::Service<http::Request<Body>> for RequestSizeService<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let max_bytes = self.max_bytes;
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            if !is_size_refusal(response.headers()) {
                return Ok(response);
            }
            tracing::info!(max_bytes, "request refused: message too large");
            Ok(status(
                Reason::RequestTooLarge,
                format!("the request message is larger than {max_bytes} bytes"),
            )
            .into_http())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_out_of_range_is_the_size_check() {
        let bare = tonic::Status::out_of_range("too large").into_http::<Body>();
        assert!(is_size_refusal(bare.headers()));
        let ours = status(Reason::CaseNotFound, "x").into_http::<Body>();
        assert!(!is_size_refusal(ours.headers()));
        let with_details = tonic::Status::with_details(Code::OutOfRange, "x", vec![1, 2].into())
            .into_http::<Body>();
        assert!(!is_size_refusal(with_details.headers()));
    }
}
