//! The control server: actix-web on the node's own System, on a private Unix socket and
//! optionally on TCP, where every request but `GET /healthz` must carry the bearer token.
//!
//! Each listener gets its own `HttpServer` with one worker: the API is light, and its handlers
//! only ask roles' actors, so one event loop serves it without ever blocking a role. Bounds: at
//! most [`MAX_CONNECTIONS`] connections per listener, request heads within
//! [`REQUEST_HEAD_TIMEOUT`], bodies of at most [`crate::routes::MAX_BODY_BYTES`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};
use troupe_core::context::Published;
use troupe_core::unix_socket::{self, SocketFile};

use crate::config::ControlConfig;
use crate::error::ApiError;
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
}

/// Who may call: anyone who reached the listener (the Unix socket: its file mode decides), or
/// only holders of the token (TCP).
#[derive(Clone)]
struct Access(Option<Token>);

/// An `HttpServer` serving the API with `$access`, with the node's bounds.
macro_rules! serve {
    ($api:expr, $access:expr) => {{
        let (api, access) = ($api, web::Data::new($access));
        HttpServer::new(move || {
            App::new()
                .app_data(api.clone())
                .app_data(access.clone())
                .wrap(from_fn(require_token))
                .configure(routes::configure)
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .max_connections(MAX_CONNECTIONS)
        .client_request_timeout(REQUEST_HEAD_TIMEOUT)
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
        let group =
            unix_socket::resolve_group(&config.socket_group).map_err(|e| format!("control.{e}"))?;
        let path = config.socket_path(setup.node.name());
        let (listener, socket) = unix_socket::claim(&path, group)
            .await
            .map_err(|e| format!("control socket {e}"))?;
        let api = web::Data::new(Api::new(setup.node, setup.published, setup.reloads));
        let mut servers = Vec::new();
        let unix = serve!(api.clone(), Access(None))
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
            let server = serve!(api, Access(Some(token)))
                .listen(listener)
                .map_err(|e| format!("control.bind: cannot listen on {}: {e}", config.bind))?
                .run();
            servers.push(server.handle());
            actix_rt::spawn(server);
        }
        tracing::info!(
            socket = %path.display(),
            mode = if group.is_some() { "0660" } else { "0600" },
            tcp = tcp.map(|a| a.to_string()),
            "control API listening"
        );
        Ok(ControlServer {
            servers,
            socket,
            tcp,
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

    /// Stops serving (requests in flight get a second to finish) and removes the socket.
    pub async fn stop(self) {
        for server in &self.servers {
            server.stop(true).await;
        }
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

/// Over TCP, everything but `GET /healthz` needs `Authorization: Bearer <token>`.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let token = req
        .app_data::<web::Data<Access>>()
        .and_then(|access| access.0.clone());
    if let Some(token) = token {
        let open = req.method() == actix_web::http::Method::GET && req.path() == "/healthz";
        let presented = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !open && !token.authorizes(presented) {
            let why = if presented.is_empty() {
                "this listener needs `Authorization: Bearer <token>` (the token in [control] token_file)"
            } else {
                "the bearer token is not this node's"
            };
            return Err(ApiError::new(401, "unauthorized", why).into());
        }
    }
    next.call(req).await
}
