//! The hub's IO: the socket file ([`socket`]), the actor that owns the listener and feeds
//! the hub ([`actor`]), each connection's reader and writer tasks (`connection`), and the
//! thread that reads and writes services' config files (`config_store`).

pub mod actor;
pub(crate) mod config_store;
pub(crate) mod connection;
pub mod socket;
