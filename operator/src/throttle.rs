//! Client-side rate limiting of the operator's API requests: a token bucket of `qps`
//! requests a second with bursts of `burst` (client-go's `--kube-api-qps`/`--kube-api-burst`,
//! controller-runtime's QPS and Burst), as a tower layer under the kube client. A request
//! waits for a token before it is sent; a burst of reconciles (a thousand memories created
//! at once, a storm of child status changes) then reaches the API server at most at `qps`.
//! Watches count once, when they start.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tower::{Layer, Service};

/// The rate limit: `qps` requests a second, bursts of `burst`.
#[derive(Clone)]
pub struct Throttle {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

impl Throttle {
    /// `qps` requests a second with bursts of up to `burst` (at least 1); `None` when `qps`
    /// is 0 (no limit).
    pub fn new(qps: u32, burst: u32) -> Option<Throttle> {
        let qps = NonZeroU32::new(qps)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Some(Throttle {
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(qps).allow_burst(burst),
            )),
        })
    }
}

impl<S> Layer<S> for Throttle {
    type Service = Throttled<S>;

    fn layer(&self, inner: S) -> Throttled<S> {
        Throttled {
            inner,
            limiter: Arc::clone(&self.limiter),
            waiting: None,
            permitted: false,
        }
    }
}

/// A service whose requests each wait for a token.
pub struct Throttled<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    permitted: bool,
}

impl<S, R> Service<R> for Throttled<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.permitted {
            let limiter = Arc::clone(&self.limiter);
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(async move { limiter.until_ready().await }));
            if waiting.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.waiting = None;
            self.permitted = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.permitted = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::{Duration, Instant};
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_past_the_burst_wait_for_tokens() {
        let throttle = Throttle::new(20, 5).expect("a limit");
        let mut service = throttle.layer(tower::service_fn(|n: u32| async move {
            Ok::<u32, Infallible>(n)
        }));
        let started = Instant::now();
        for n in 0..15 {
            let answer = service.ready().await.expect("ready").call(n).await;
            assert_eq!(answer, Ok(n));
        }
        // 5 at once, then 10 at 20 a second: about 0.5 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(Throttle::new(0, 10).is_none(), "0 means no limit");
    }
}
