//! # troupe-control
//!
//! The node's control plane: one versioned HTTP/JSON API (`/v1/…`) that every node serves,
//! whatever its roles, and `troupe ctl`, its command-line client.
//!
//! - [`ControlServer`] serves the API with actix-web on the node's own actix System: on a
//!   private Unix socket ([`ControlConfig::socket_path`]), and optionally on TCP where a
//!   bearer [`Token`] is required. It keeps no state of its own: handlers ask the roles'
//!   actors, found in the node's published registry (see [`routes`]).
//! - [`NodeHandle`] is what the node shares with it (identity, roles' states);
//!   [`ReloadRequest`]s reach the node's main task, which owns the configuration.
//! - [`client`] is a small HTTP client over a Unix socket or TCP; [`ctl`] is `troupe ctl`.
//! - [`console`] is the web console: a page and its assets, built into the binary, that show
//!   and steer the node through the API from a browser.
//!
//! Errors are JSON bodies that name the rule broken ([`ApiError`]).

#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod config;
pub mod console;
pub mod ctl;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod state;
pub mod token;

pub use config::ControlConfig;
pub use error::ApiError;
pub use server::{ControlServer, ControlSetup};
pub use state::{NodeHandle, NodeView, ReloadError, ReloadRequest, Reloads, RoleState};
pub use token::Token;
