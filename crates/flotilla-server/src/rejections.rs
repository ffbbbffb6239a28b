//! A tower layer around the gRPC services that counts calls answered with an error, by method
//! and gRPC code, into the replica's [`Telemetry`]. It sees the errors tonic answers in the
//! response headers (a unary call's error, a refused stream); an error that ends a stream
//! after it started answering travels in trailers and is not counted here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::telemetry::Telemetry;

/// Wraps a service in [`Counted`].
#[derive(Clone)]
pub struct CountRejections(pub Arc<Telemetry>);

impl<S> tower_layer::Layer<S> for CountRejections {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            telemetry: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Counted<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let telemetry = self.telemetry.clone();
        let answered = self.inner.call(request);
        Box::pin(async move {
            let response = answered.await?;
            if let Some(code) = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
            {
                if code != "0" {
                    telemetry.rejected(&method, code);
                }
            }
            Ok(response)
        })
    }
}
