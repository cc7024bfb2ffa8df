//! The hub's IO: the actor that owns the listener and feeds the hub ([`actor`]), each
//! connection's reader and writer tasks (`connection`), and the thread that reads and writes
//! services' config files (`config_store`). The socket file itself is claimed with
//! `troupe_core::unix_socket`.

pub mod actor;
pub(crate) mod config_store;
pub(crate) mod connection;
