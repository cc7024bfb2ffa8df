//! The control server: actix-web on the node's own System, on a private Unix socket and
//! optionally on TCP, where every request but the health checks and the console's assets must
//! carry the bearer token.
//!
//! Each listener gets its own `HttpServer` with one worker: the API is light, and its handlers
//! only ask roles' actors, so one event loop serves it without ever blocking a role. Bounds: at
//! most [`MAX_CONNECTIONS`] connections per listener, request heads within
//! [`REQUEST_HEAD_TIMEOUT`], bodies of at most [`crate::routes::MAX_BODY_BYTES`].
//!
//! `GET /metrics` ([`crate::metrics`]) is one of the API's routes, and may also have a TCP
//! listener of its own (`[control] metrics_bind`) that serves nothing else, with a token of
//! its own (`metrics_token_file`) or none, and the same bounds. The store of services' own
//! metrics runs on a thread of its own, subscribed to the ipc hub's events as the ipc role
//! starts (it is published as the node's [`NodeSubscriber`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};
use troupe_core::context::Published;
use troupe_core::unix_socket::{self, SocketFile};
use troupe_ipc::events::NodeSubscriber;

use crate::config::ControlConfig;
use crate::error::ApiError;
use crate::metrics::{self, Metrics, ServiceMetricsStore, StoreLimits};
use crate::routes::{self, Api};
use crate::state::{NodeHandle, Reloads};
use crate::token::Token;

/// Connections served at once per listener; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its request head.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control server needs from its node.
pub struct ControlSetup {
    /// The `[control]` table.
    pub config: ControlConfig,
    /// The node's identity and roles.
    pub node: NodeHandle,
    /// Where roles publish their actors' addresses.
    pub published: Published,
    /// Where reloads go.
    pub reloads: Reloads,
}

/// The running control server.
pub struct ControlServer {
    servers: Vec<ServerHandle>,
    socket: SocketFile,
    tcp: Option<std::net::SocketAddr>,
    metrics_tcp: Option<std::net::SocketAddr>,
    /// The thread of the store of services' metrics.
    store: actix_rt::Arbiter,
}

/// Who may call: anyone who reached the listener (the Unix socket: its file mode decides), or
/// only holders of the token (TCP).
#[derive(Clone)]
struct Access(Option<Token>);

/// Who may scrape the metrics listener: anyone, or only holders of its token.
#[derive(Clone)]
struct MetricsAccess(Option<Token>);

/// Applies the node's bounds to an `HttpServer`.
macro_rules! bounded {
    ($server:expr) => {
        $server
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .max_connections(MAX_CONNECTIONS)
            .client_request_timeout(REQUEST_HEAD_TIMEOUT)
    };
}

/// An `HttpServer` serving the API (and `/metrics`) with `$access`, with the node's bounds.
macro_rules! serve {
    ($api:expr, $metrics:expr, $access:expr) => {{
        let (api, metrics, access) = ($api, $metrics, web::Data::new($access));
        bounded!(HttpServer::new(move || {
            App::new()
                .app_data(api.clone())
                .app_data(metrics.clone())
                .app_data(access.clone())
                .wrap(from_fn(require_token))
                .configure(routes::configure)
        }))
    }};
}

impl ControlServer {
    /// Claims the socket (and binds the TCP address), then serves. The error says what could
    /// not be set up.
    pub async fn start(setup: ControlSetup) -> Result<ControlServer, String> {
        let config = &setup.config;
        let token = match config.bind.is_empty() {
            true => None,
            false => Some(config.token().map_err(|e| format!("control.{e}"))?),
        };
        let metrics_token = config.metrics_token().map_err(|e| format!("control.{e}"))?;
        let group =
            unix_socket::resolve_group(&config.socket_group).map_err(|e| format!("control.{e}"))?;
        let path = config.socket_path(setup.node.name());
        let (listener, socket) = unix_socket::claim(&path, group)
            .await
            .map_err(|e| format!("control socket {e}"))?;
        let store_thread = actix_rt::Arbiter::new();
        let limits = StoreLimits::with_series_per_service(config.max_service_series);
        let store: Addr<ServiceMetricsStore> =
            ServiceMetricsStore::start_in_arbiter(&store_thread.handle(), move |_| {
                ServiceMetricsStore::new(limits)
            });
        setup
            .published
            .publish(NodeSubscriber(store.clone().recipient()));
        let metrics = web::Data::new(Metrics::new(
            setup.node.clone(),
            setup.published.clone(),
            store,
        ));
        let api = web::Data::new(Api::new(setup.node, setup.published, setup.reloads));
        let mut servers = Vec::new();
        let unix = serve!(api.clone(), metrics.clone(), Access(None))
            .listen_uds(listener)
            .map_err(|e| format!("control socket {}: {e}", path.display()))?
            .run();
        servers.push(unix.handle());
        actix_rt::spawn(unix);
        let mut tcp = None;
        if let Some(token) = token {
            let listener = std::net::TcpListener::bind(&config.bind)
                .map_err(|e| format!("control.bind: cannot listen on {}: {e}", config.bind))?;
            tcp = listener.local_addr().ok();
            let server = serve!(api, metrics.clone(), Access(Some(token)))
                .listen(listener)
                .map_err(|e| format!("control.bind: cannot listen on {}: {e}", config.bind))?
                .run();
            servers.push(server.handle());
            actix_rt::spawn(server);
        }
        let mut metrics_tcp = None;
        if !config.metrics_bind.is_empty() {
            let at = &config.metrics_bind;
            let listener = std::net::TcpListener::bind(at)
                .map_err(|e| format!("control.metrics_bind: cannot listen on {at}: {e}"))?;
            metrics_tcp = listener.local_addr().ok();
            let access = web::Data::new(MetricsAccess(metrics_token.clone()));
            let server = bounded!(HttpServer::new(move || {
                App::new()
                    .app_data(metrics.clone())
                    .app_data(access.clone())
                    .wrap(from_fn(require_metrics_token))
                    .route("/metrics", web::get().to(metrics::serve))
                    .default_service(web::to(metrics::not_found))
            }))
            .listen(listener)
            .map_err(|e| format!("control.metrics_bind: cannot listen on {at}: {e}"))?
            .run();
            servers.push(server.handle());
            actix_rt::spawn(server);
        }
        tracing::info!(
            socket = %path.display(),
            mode = if group.is_some() { "0660" } else { "0600" },
            tcp = tcp.map(|a| a.to_string()),
            metrics = metrics_tcp.map(|a| a.to_string()),
            metrics_token = metrics_tcp.map(|_| metrics_token.is_some()),
            "control API listening"
        );
        Ok(ControlServer {
            servers,
            socket,
            tcp,
            metrics_tcp,
            store: store_thread,
        })
    }

    /// The Unix socket's path.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// The TCP address, when one is bound.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp
    }

    /// The metrics listener's TCP address (`metrics_bind`), when one is bound.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_tcp
    }

    /// Stops serving (requests in flight get a second to finish) and removes the socket.
    pub async fn stop(self) {
        for server in &self.servers {
            server.stop(true).await;
        }
        self.store.stop();
        let socket = self.socket;
        let path: PathBuf = socket.path().to_path_buf();
        match tokio::task::spawn_blocking(move || socket.remove()).await {
            Ok(None) => tracing::debug!(socket = %path.display(), "control socket removed"),
            Ok(Some(problem)) => tracing::warn!(socket = %path.display(), "{problem}"),
            Err(err) => {
                tracing::warn!(socket = %path.display(), %err, "removing the control socket failed")
            }
        }
    }
}

/// Whether `GET path` is served without the token on TCP: the health checks (for load
/// balancers and orchestrators) and the web console's page and assets, which hold no data
/// (the page asks for the token before it asks the API anything).
pub fn is_open(method: &actix_web::http::Method, path: &str) -> bool {
    method == actix_web::http::Method::GET
        && (matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/console/"))
}

/// Over TCP, everything but [`is_open`] requests needs `Authorization: Bearer <token>`.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<Access>>()
        .and_then(|access| access.0.clone());
    if let Some(token) = token {
        if !is_open(req.method(), req.path()) {
            check_bearer(&req, &token, "token_file")?;
        }
    }
    next.call(req).await
}

/// On the metrics listener with a token, every request needs it.
async fn require_metrics_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<MetricsAccess>>()
        .and_then(|access| access.0.clone());
    if let Some(token) = token {
        check_bearer(&req, &token, "metrics_token_file")?;
    }
    next.call(req).await
}

/// Whether `req` carries `Authorization: Bearer <token>` (compared in constant time); the
/// refusal names the `[control]` key holding the token.
fn check_bearer(req: &ServiceRequest, token: &Token, key: &str) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if token.authorizes(presented) {
        return Ok(());
    }
    let why = if presented.is_empty() {
        format!(
            "this listener needs `Authorization: Bearer <token>` (the token in [control] {key})"
        )
    } else {
        "the bearer token is not this node's".to_string()
    };
    Err(ApiError::new(401, "unauthorized", why))
}
