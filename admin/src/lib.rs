//! # windlass-admin
//!
//! The operations console of windlass, as an [axum](https://docs.rs/axum) router you mount in
//! your own service under any path, and one Prometheus exporter for the metrics of every
//! windlass crate.
//!
//! - [`Console`]: pages for jobs (depth per queue and state, throughput, list with filters and
//!   keyset paging, detail with every attempt's error, retry / cancel / discard one or many,
//!   queue pause and resume, cron schedules), the outbox (pending, lag, dead rows with
//!   requeue), the bus (groups, dead-letter browser with redrive) and the cache (hit ratio per
//!   data type). Server-rendered HTML, escaped by construction ([maud](https://maud.lambda.xyz)),
//!   with a small script of the crate's own for conveniences (select all, confirm); every page
//!   works without it.
//! - Safe by default: no page without authentication (a bearer token or basic auth from the
//!   config, or your own tower layer), actions are POSTs with a CSRF token and a same-origin
//!   check, a console can be scoped to one tenant ([`TenantScope`]) and then never shows or
//!   touches another tenant's rows, and a read-only mode. Bad input is a 4xx page with the
//!   reason.
//! - Pages talk to one small trait per primitive ([`JobsSource`], [`OutboxSource`],
//!   [`BusSource`], [`CacheSource`]); [`JobsApi`], [`OutboxApi`], [`BusApi`] and [`CacheApi`]
//!   implement them on the primitives' public APIs.
//! - [`prometheus`]: one recorder for every crate's metrics, described from their catalogs.
//!
//! ```
//! use windlass_admin::{Console, ConsoleConfig, JobsApi};
//! use windlass_jobs::{Jobs, memory::MemoryJobStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jobs = Jobs::new(MemoryJobStore::new());
//! let console = Console::new(ConsoleConfig::default().token("a-long-random-secret-token")?)
//!     .jobs(JobsApi::new(jobs.clone()));
//! // Mount it anywhere in your app.
//! let app: axum::Router = axum::Router::new().nest("/admin", console.router());
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! Design notes and what each page costs at scale: `docs/admin.md` in the repository.
#![doc(test(attr(deny(warnings))))]

mod auth;
mod config;
mod error;
pub mod metrics;
mod pages;
pub mod prometheus;
mod source;

use std::sync::Arc;

use axum::Router;

pub use config::{Auth, ConfigError, ConsoleConfig, CookieSecurity, MAX_PAGE_SIZE, MIN_TOKEN_LEN};
pub use error::ConsoleError;
pub use source::{
    ActionReport, BlockedOutboxKey, BlockedOutboxPage, BusApi, BusSource, CacheApi, CacheSource,
    CacheTypeStats, CronSchedule, DeadOutboxEvent, DeadOutboxPage, Depths, DlqEntry, DlqPage,
    Exactness, GroupStatus, JobAction, JobPage, JobQuery, JobsApi, JobsSource, OutboxApi,
    OutboxDelivery, OutboxSource, OutboxTopicStats, QueueDepth, SourceError, SourceResult,
    Throughput,
};
pub use windlass_core::TenantScope;

/// The console: its configuration and the sources its pages read. Cheap to clone.
///
/// Sources are optional: a page whose source is not set says so.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("config", &self.inner.config)
            .field("jobs", &self.inner.jobs.is_some())
            .field("outbox", &self.inner.outbox.is_some())
            .field("bus", &self.inner.bus.is_some())
            .field("cache", &self.inner.cache.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) config: ConsoleConfig,
    pub(crate) key: [u8; 32],
    pub(crate) jobs: Option<Arc<dyn JobsSource>>,
    pub(crate) outbox: Option<Arc<dyn OutboxSource>>,
    pub(crate) bus: Option<Arc<dyn BusSource>>,
    pub(crate) cache: Option<Arc<dyn CacheSource>>,
}

/// Router state: the console and whether a user layer authenticates.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) inner: Arc<Inner>,
    pub(crate) layer: bool,
}

impl Console {
    /// A console with `config` and no sources yet.
    pub fn new(config: ConsoleConfig) -> Self {
        let key = config.secret.unwrap_or_else(rand::random);
        Self {
            inner: Arc::new(Inner {
                config,
                key,
                jobs: None,
                outbox: None,
                bus: None,
                cache: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        let inner = Arc::get_mut(&mut self.inner);
        match inner {
            Some(inner) => f(inner),
            None => {
                let old = &self.inner;
                let mut copy = Inner {
                    config: old.config.clone(),
                    key: old.key,
                    jobs: old.jobs.clone(),
                    outbox: old.outbox.clone(),
                    bus: old.bus.clone(),
                    cache: old.cache.clone(),
                };
                f(&mut copy);
                self.inner = Arc::new(copy);
            }
        }
        self
    }

    /// The jobs pages' source.
    pub fn jobs(self, source: impl JobsSource) -> Self {
        self.with(|i| i.jobs = Some(Arc::new(source)))
    }

    /// The outbox page's source.
    pub fn outbox(self, source: impl OutboxSource) -> Self {
        self.with(|i| i.outbox = Some(Arc::new(source)))
    }

    /// The bus pages' source.
    pub fn bus(self, source: impl BusSource) -> Self {
        self.with(|i| i.bus = Some(Arc::new(source)))
    }

    /// The cache section's source.
    pub fn cache(self, source: impl CacheSource) -> Self {
        self.with(|i| i.cache = Some(Arc::new(source)))
    }

    /// The configuration.
    pub fn config(&self) -> &ConsoleConfig {
        &self.inner.config
    }

    /// The router, behind the configured authentication ([`ConsoleConfig::token`] or
    /// [`ConsoleConfig::basic`]; without either, every request gets 401). Mount it with
    /// `Router::nest("/your/path", console.router())`; links follow the mount path.
    pub fn router(&self) -> Router {
        self.build(false)
    }

    /// The router behind your own authentication `layer` (any tower layer that refuses
    /// unauthenticated requests, e.g. your SSO middleware). The console trusts every request
    /// that reaches it, and still requires CSRF tokens and same-origin on actions.
    pub fn router_with_auth_layer<L>(&self, layer: L) -> Router
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<axum::extract::Request, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
    {
        self.build(true).layer(layer)
    }

    fn build(&self, layer: bool) -> Router {
        let shared = Shared {
            inner: self.inner.clone(),
            layer,
        };
        pages::routes()
            .route_layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                metrics::observe,
            ))
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                auth::guard,
            ))
            .layer(axum::middleware::from_fn(auth::security_headers))
            .with_state(shared)
    }
}
