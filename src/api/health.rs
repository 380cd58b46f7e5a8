//! Health without a way to hold resources: `Check` is served (unauthenticated, as load
//! balancers expect, under the server's connection, stream and time limits), `Watch` is refused.
//! A `Watch` stream would stay open for as long as the caller likes, with no token: anyone
//! could pin streams and connections with it.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Status, body::Body, server::NamedService};
use tower::Service;

/// The path of the streaming health method that is refused.
const WATCH: &str = "/grpc.health.v1.Health/Watch";

/// The health service with `Watch` answered UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct CheckOnly<S> {
    inner: S,
}

impl<S> CheckOnly<S> {
    /// Wraps the health service.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for CheckOnly<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for CheckOnly<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == WATCH {
            let status = Status::unimplemented(
                "health Watch is not served: poll grpc.health.v1.Health/Check instead",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        }
        // The ready service handles this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}
