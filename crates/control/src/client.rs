//! A small HTTP/1.1 client for the control API (hyper), over the node's Unix socket or TCP.
//! Every call is bounded: connecting by the client's timeout, an answer by the wait given, a
//! body by [`MAX_RESPONSE_BYTES`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::token::Token;

/// Largest answer read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Where the node's API is.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address (`HOST:PORT`), with the bearer token.
    Tcp {
        /// `HOST:PORT`.
        authority: String,
        /// The token, when one was given.
        token: Option<Token>,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "socket {}", path.display()),
            Target::Tcp { authority, .. } => write!(f, "http://{authority}"),
        }
    }
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there.
    #[error(
        "no node answers on {target}: {source} (is `troupe run` running with that name or socket?)"
    )]
    Unreachable {
        /// Where.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no answer from {target} within {after:?} (the node may be busy or stuck; try a longer --timeout)")]
    Timeout {
        /// Where.
        target: String,
        /// How long was waited.
        after: Duration,
    },
    /// The conversation failed.
    #[error("talking to {target}: {why}")]
    Protocol {
        /// Where.
        target: String,
        /// What went wrong.
        why: String,
    },
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A client of one node's API.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    connect_timeout: Duration,
}

impl Client {
    /// A client for `target`; connecting is bounded by `connect_timeout`.
    pub fn new(target: Target, connect_timeout: Duration) -> Self {
        Client {
            target,
            connect_timeout,
        }
    }

    /// Where it connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn protocol(&self, why: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            target: self.target.to_string(),
            why: why.to_string(),
        }
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            target: self.target.to_string(),
            source,
        };
        let connecting = async {
            match &self.target {
                Target::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(unreachable)?;
                    self.handshake(stream).await
                }
                Target::Tcp { authority, .. } => {
                    let stream = tokio::net::TcpStream::connect(authority.as_str())
                        .await
                        .map_err(unreachable)?;
                    self.handshake(stream).await
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ClientError::Timeout {
                target: self.target.to_string(),
                after: self.connect_timeout,
            })?
    }

    async fn handshake<S>(&self, stream: S) -> Result<Sender, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut request = Request::builder().method(method).uri(path);
        request = match &self.target {
            Target::Unix(_) => request.header(HOST, "localhost"),
            Target::Tcp { authority, token } => {
                let request = request.header(HOST, authority.as_str());
                match token {
                    Some(token) => {
                        let mut value = b"Bearer ".to_vec();
                        value.extend_from_slice(token.expose());
                        request.header(AUTHORIZATION, value)
                    }
                    None => request,
                }
            }
        };
        let body = match body {
            Some(value) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value).map_err(|e| self.protocol(e))?)
            }
            None => Bytes::new(),
        };
        request.body(Full::new(body)).map_err(|e| self.protocol(e))
    }

    /// Sends one request and reads the whole answer, within `wait` after connecting.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        wait: Duration,
    ) -> Result<Answer, ClientError> {
        let mut sender = self.connect().await?;
        let request = self.build(method, path, body)?;
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.protocol(e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| self.protocol(e))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(wait, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                target: self.target.to_string(),
                after: wait,
            })?
    }

    /// Sends a GET whose answer is a stream; calls `chunk` with each piece of the body as it
    /// arrives, until the node ends it. The answer's head must come within `wait`. Returns the
    /// status and, for an error status, the body.
    pub async fn stream(
        &self,
        path: &str,
        wait: Duration,
        mut chunk: impl FnMut(&[u8]),
    ) -> Result<Answer, ClientError> {
        let mut sender = self.connect().await?;
        let request = self.build(Method::GET, path, None)?;
        let response = tokio::time::timeout(wait, sender.send_request(request))
            .await
            .map_err(|_| ClientError::Timeout {
                target: self.target.to_string(),
                after: wait,
            })?
            .map_err(|e| self.protocol(e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status >= 300 {
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| self.protocol(e))?
                .to_bytes();
            return Ok(Answer { status, body });
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(e))?;
            if let Some(data) = frame.data_ref() {
                chunk(data);
            }
        }
        Ok(Answer {
            status,
            body: Bytes::new(),
        })
    }
}
