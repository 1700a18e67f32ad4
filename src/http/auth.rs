//! One shared credential per source: fetched lazily, renewed before it expires, renewed once
//! more when the server rejects it, and never fetched twice at the same time.
//!
//! The renewal runs while holding a `tokio::sync::Mutex`; callers that arrive during a renewal
//! wait for it and reuse its result (this is the single-flight). Each token carries a
//! generation number: [`TokenCache::invalidate`] with the generation a failed request used only
//! forces a renewal if no one renewed since, so fifty parallel `401`s cause one re-login.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::error::Result;

/// A token and the time it stops being usable.
#[derive(Debug, Clone)]
pub struct Token<T> {
    pub value: T,
    pub generation: u64,
    expires: Option<Instant>,
}

/// A lazily fetched, self-renewing credential.
pub struct TokenCache<T: Clone + Send> {
    state: Mutex<State<T>>,
    /// Renew this long before the stated expiry (clock skew, long requests).
    margin: Duration,
}

struct State<T> {
    current: Option<Token<T>>,
    generation: u64,
    stale: bool,
}

impl<T: Clone + Send> TokenCache<T> {
    pub fn new(margin: Duration) -> Self {
        TokenCache {
            state: Mutex::new(State {
                current: None,
                generation: 0,
                stale: false,
            }),
            margin,
        }
    }

    /// The current token, fetching one with `fetch` if there is none, it is close to expiry,
    /// or it was invalidated. `fetch` returns the value and its lifetime (`None`: no expiry).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Token<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(T, Option<Duration>)>>,
    {
        let mut st = self.state.lock().await;
        if let Some(tok) = &st.current {
            let fresh = tok.expires.is_none_or(|e| Instant::now() + self.margin < e);
            if fresh && !st.stale {
                return Ok(tok.clone());
            }
        }
        let (value, ttl) = fetch().await?;
        st.generation += 1;
        st.stale = false;
        let tok = Token {
            value,
            generation: st.generation,
            // A lifetime too long for an Instant (a server's `expiresIn: 1e19`) never expires.
            expires: ttl.and_then(|t| Instant::now().checked_add(t)),
        };
        st.current = Some(tok.clone());
        Ok(tok)
    }

    /// Marks the token of `generation` as rejected; the next [`get`](Self::get) renews it unless
    /// someone already did.
    pub async fn invalidate(&self, generation: u64) {
        let mut st = self.state.lock().await;
        if st.generation == generation {
            st.stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_lifetime_too_long_for_an_instant_means_no_expiry() {
        let cache: super::TokenCache<u8> = super::TokenCache::new(std::time::Duration::from_secs(30));
        for _ in 0..2 {
            let t = cache
                .get(|| async { Ok((1, Some(std::time::Duration::from_secs(u64::MAX)))) })
                .await
                .unwrap();
            assert_eq!(t.generation, 1, "fetched once, then reused");
        }
    }

    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn parallel_invalidations_cause_one_renewal() {
        let cache = Arc::new(TokenCache::<String>::new(Duration::from_secs(1)));
        let fetches = Arc::new(AtomicU32::new(0));
        let fetch = |f: Arc<AtomicU32>| {
            move || async move {
                let n = f.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok((format!("tok{n}"), Some(Duration::from_secs(3600))))
            }
        };
        let first = cache.get(fetch(fetches.clone())).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, fetches) = (cache.clone(), fetches.clone());
            let g = first.generation;
            tasks.push(tokio::spawn(async move {
                cache.invalidate(g).await;
                cache.get(fetch(fetches)).await.unwrap().value
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "tok1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn token_is_renewed_before_expiry() {
        let cache = TokenCache::<u32>::new(Duration::from_secs(10));
        let a = cache
            .get(|| async { Ok((1, Some(Duration::from_secs(5)))) })
            .await
            .unwrap();
        let b = cache
            .get(|| async { Ok((2, Some(Duration::from_secs(3600)))) })
            .await
            .unwrap();
        assert_eq!((a.value, b.value), (1, 2), "a token inside the margin is renewed");
        let c = cache.get(|| async { Ok((3, None)) }).await.unwrap();
        assert_eq!(c.value, 2);
    }
}
