//! The broker crate's errors.

/// What can go wrong starting or talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A socket could not be bound to its configured address.
    #[error("cannot bind `{key}` to {endpoint}: {source}")]
    Bind {
        /// The config key of the address.
        key: String,
        /// The address.
        endpoint: String,
        /// ZeroMQ's reason.
        source: zmq::Error,
    },
    /// Creating or configuring a socket failed.
    #[error("cannot set up the {0}: {1}")]
    Socket(&'static str, zmq::Error),
    /// The socket thread could not be started.
    #[error("cannot start the broker's socket thread: {0}")]
    Thread(std::io::Error),
    /// The socket thread has ended.
    #[error("the broker's socket thread has stopped")]
    Stopped,
    /// The socket thread has this many commands waiting already: it is not keeping up, and
    /// the command was not queued.
    #[error("the broker's socket thread is busy: {0} commands are waiting already")]
    Busy(usize),
    /// The command channel to the socket thread could not be created.
    #[error("cannot create the broker's command channel: {0}")]
    Bridge(std::io::Error),
    /// A live update's table is not valid (the key is under `broker.`).
    #[error("{0}")]
    Config(troupe_core::ConfigError),
    /// A live update could not bind a socket of a service it adds or moves; nothing changed.
    #[error("cannot bind the {socket} of service `{service}` to {endpoint}: {source}")]
    ServiceBind {
        /// The service.
        service: String,
        /// `frontend` or `backend`.
        socket: &'static str,
        /// The address.
        endpoint: String,
        /// ZeroMQ's reason.
        source: zmq::Error,
    },
    /// The broker is draining (stopping): its services no longer change.
    #[error("the broker is stopping; its services can no longer change")]
    Draining,
}

impl<C> From<troupe_core::zmq_thread::SendError<C>> for BrokerError {
    fn from(err: troupe_core::zmq_thread::SendError<C>) -> Self {
        match err {
            troupe_core::zmq_thread::SendError::Stopped(_) => BrokerError::Stopped,
            troupe_core::zmq_thread::SendError::Full(waiting, _) => BrokerError::Busy(waiting),
        }
    }
}
