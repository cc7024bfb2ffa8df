//! [`AsyncClient`]: the client on tokio. Same operations as [`Client`](super::Client).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::state::{Answer, ClientState};
use super::{
    service_from_env, socket_from_env, timeout_ms, ClientError, ClientOptions, Incoming, Request,
    Target, REQUEST_GRACE,
};
use crate::wire::envelope::encode_metric;
use crate::wire::{Envelope, ErrorCode, Kind};

/// An async connection to the hub; see the [module doc](super).
pub struct AsyncClient {
    stream: UnixStream,
    state: ClientState,
    options: ClientOptions,
}

impl AsyncClient {
    /// Connects to the hub at `path` (not registered yet).
    pub async fn connect(path: impl AsRef<Path>) -> Result<AsyncClient, ClientError> {
        AsyncClient::connect_with(path, ClientOptions::default()).await
    }

    /// Connects with `options`.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        options: ClientOptions,
    ) -> Result<AsyncClient, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AsyncClient {
            stream,
            state: ClientState::new(&options),
            options,
        })
    }

    /// Connects to the hub named by `TROUPE_IPC_SOCKET`.
    pub async fn connect_env() -> Result<AsyncClient, ClientError> {
        AsyncClient::connect(socket_from_env()?).await
    }

    /// This process's pid, as the hub knows it.
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// Registers this connection under this process's pid, and `name` if given.
    pub async fn register(&mut self, name: Option<&str>) -> Result<(), ClientError> {
        let env = Envelope {
            pid: self.state.pid,
            name: name.unwrap_or(""),
            ..Envelope::new(Kind::Register)
        };
        self.call(env, self.options.op_timeout).await.map(drop)
    }

    /// Sends `body` to `to`; returns its correlation id.
    pub async fn send(&mut self, to: impl Target, body: &[u8]) -> Result<u64, ClientError> {
        let corr = self.queue(to, body);
        self.flush().await?;
        Ok(corr)
    }

    /// Queues a message without writing it yet; see [`Client::queue`](super::Client::queue).
    #[inline]
    pub fn queue(&mut self, to: impl Target, body: &[u8]) -> u64 {
        self.state.queue_to(Kind::Send, &to, body, 0)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.state.write_buf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.state.write_buf.is_empty() {
            self.stream.write_all(self.state.outgoing()).await?;
            self.state.written();
        }
        Ok(())
    }

    /// Sends `body` to every connection whose name starts with `prefix`.
    pub async fn broadcast(&mut self, prefix: &str, body: &[u8]) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            name: prefix,
            body,
            ..Envelope::new(Kind::Broadcast)
        });
        self.flush().await
    }

    /// Sends a request and waits for its reply (or the hub's error, at `timeout`).
    pub async fn request(
        &mut self,
        to: impl Target,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let corr = self
            .state
            .queue_to(Kind::Request, &to, body, timeout_ms(timeout));
        self.flush().await?;
        self.wait(corr, timeout + REQUEST_GRACE)
            .await?
            .into_result()
    }

    /// The next delivered message, request or failure report.
    pub async fn recv(&mut self) -> Result<Incoming, ClientError> {
        loop {
            if let Some(message) = self.state.next_message() {
                return Ok(Incoming::Message(message));
            }
            if let Some(incoming) = self.state.next_incoming()? {
                return Ok(incoming);
            }
            self.fill().await?;
        }
    }

    /// Answers `request` with `body`.
    pub async fn reply(&mut self, request: &Request, body: &[u8]) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            pid: request.from,
            corr: request.corr,
            body,
            ..Envelope::new(Kind::Reply)
        });
        self.flush().await
    }

    /// Refuses `request`, saying why.
    pub async fn refuse(&mut self, request: &Request, why: &str) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            pid: request.from,
            corr: request.corr,
            arg: ErrorCode::Refused.as_u32(),
            body: why.as_bytes(),
            ..Envelope::new(Kind::Error)
        });
        self.flush().await
    }

    /// The hub's counters, as JSON.
    pub async fn stats(&mut self) -> Result<serde_json::Value, ClientError> {
        let body = self
            .call(Envelope::new(Kind::Stats), self.options.op_timeout)
            .await?;
        serde_json::from_slice(&body).map_err(|err| ClientError::Protocol(err.to_string()))
    }

    /// Attaches this connection as the channel of service `service`.
    pub async fn attach(&mut self, service: &str) -> Result<(), ClientError> {
        let env = Envelope {
            name: service,
            ..Envelope::new(Kind::Attach)
        };
        self.call(env, self.options.op_timeout).await.map(drop)
    }

    /// Registers and attaches the channel of the service named by `TROUPE_SERVICE_ID`.
    pub async fn attach_from_env(&mut self) -> Result<String, ClientError> {
        let service = service_from_env()?;
        self.register(None).await?;
        self.attach(&service).await?;
        Ok(service)
    }

    /// The service's persisted config (empty if none).
    pub async fn request_config(&mut self) -> Result<Vec<u8>, ClientError> {
        self.call(Envelope::new(Kind::RequestConfig), self.options.op_timeout)
            .await
    }

    /// Publishes a metric on the node's event stream.
    pub async fn metric(
        &mut self,
        device: &str,
        route_key: &str,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let body = encode_metric(device, route_key, data);
        self.state.queue(Envelope {
            body: &body,
            ..Envelope::new(Kind::Metric)
        });
        self.flush().await
    }

    /// Publishes an event on the node's event stream.
    pub async fn event(&mut self, event_type: u32, params: &[u8]) -> Result<(), ClientError> {
        self.state.queue(Envelope {
            arg: event_type,
            body: params,
            ..Envelope::new(Kind::Event)
        });
        self.flush().await
    }

    async fn call(&mut self, env: Envelope<'_>, timeout: Duration) -> Result<Vec<u8>, ClientError> {
        let corr = self.state.queue(env);
        self.flush().await?;
        self.wait(corr, timeout).await?.into_result()
    }

    async fn wait(&mut self, corr: u64, timeout: Duration) -> Result<Answer, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(answer) = self.state.answer_for(corr)? {
                return Ok(answer);
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(result) => result?,
                Err(_) => return Err(ClientError::Timeout(timeout)),
            }
        }
    }

    async fn fill(&mut self) -> Result<(), ClientError> {
        self.state.reserve_for_read();
        match self.stream.read_buf(&mut self.state.read_buf).await? {
            0 => Err(ClientError::Closed),
            _ => Ok(()),
        }
    }
}
