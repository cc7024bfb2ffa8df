//! The Role extension point.
//!
//! A role is one type implementing [`Role`]: its name (also the name of its config table), its
//! config section type, the roles it starts after, how it starts and how it stops. A binary
//! lists the roles it knows in a [`RoleSet`], one line per role:
//!
//! ```text
//! let roles = RoleSet::new().with::<Supervisor>().with::<Heartbeat>();
//! ```
//!
//! The node turns each selected role's config section into a [`PreparedRole`] (parsed and
//! validated, so config errors surface before anything starts), then starts it on its own
//! arbiter and keeps the [`RunningRole`] until shutdown.

use std::marker::PhantomData;

use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ConfigError, RoleContext, RoleError};

/// A node role: an actor (or a few) started from one config section.
///
/// The implementing type is the running role's handle: `start` returns it, `stop` consumes it.
/// Both run on the role's own arbiter thread, so neither future needs to be `Send`.
#[allow(async_fn_in_trait)]
pub trait Role: Sized + 'static {
    /// The role's name, used in `roles = [...]`, `--roles` and as its config table name.
    const NAME: &'static str;

    /// The role's config section. Use `#[serde(deny_unknown_fields, default)]` so that unknown
    /// keys are errors and every key has a default.
    type Config: Serialize + DeserializeOwned + Default + Send + 'static;

    /// Roles this one must start after (and stop before) when they run on the same node.
    /// A name not selected on the node is ignored: it may run on another machine.
    fn start_after() -> &'static [&'static str] {
        &[]
    }

    /// Checks what the section's types cannot express (cross-field rules).
    fn validate(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Starts the role's actors. Returning `Err` aborts the node's start.
    async fn start(config: Self::Config, ctx: RoleContext) -> Result<Self, RoleError>;

    /// Stops the role's actors and waits until they have stopped. The node bounds this by its
    /// `shutdown_timeout`.
    async fn stop(self);
}

/// A started role, type-erased.
pub trait RunningRole {
    /// Stops the role; see [`Role::stop`].
    fn stop(self: Box<Self>) -> LocalBoxFuture<'static, ()>;
}

impl<R: Role> RunningRole for R {
    fn stop(self: Box<Self>) -> LocalBoxFuture<'static, ()> {
        Box::pin(Role::stop(*self))
    }
}

type Launch = Box<
    dyn FnOnce(RoleContext) -> LocalBoxFuture<'static, Result<Box<dyn RunningRole>, RoleError>>
        + Send,
>;

/// A role whose config section has been parsed and validated, ready to start.
pub struct PreparedRole {
    /// The role's name.
    pub name: &'static str,
    /// See [`Role::start_after`].
    pub start_after: &'static [&'static str],
    launch: Launch,
}

impl PreparedRole {
    /// Starts the role. Must be called on the arbiter the role is to live on.
    pub fn launch(
        self,
        ctx: RoleContext,
    ) -> LocalBoxFuture<'static, Result<Box<dyn RunningRole>, RoleError>> {
        (self.launch)(ctx)
    }
}

/// What the node needs to know about a role before choosing to run it.
trait RoleEntry: Send + Sync {
    fn name(&self) -> &'static str;
    fn default_section(&self) -> serde_json::Value;
    fn parse(&self, section: serde_json::Value) -> Result<serde_json::Value, ConfigError>;
    fn prepare(&self, section: serde_json::Value) -> Result<PreparedRole, ConfigError>;
}

struct Entry<R>(PhantomData<fn() -> R>);

impl<R: Role> Entry<R> {
    fn config(section: serde_json::Value) -> Result<R::Config, ConfigError> {
        let config: R::Config = serde_path_to_error::deserialize(section).map_err(|err| {
            let path = err.path().to_string();
            let key = if path == "." { String::new() } else { path };
            ConfigError::new(key, err.into_inner().to_string()).within(R::NAME)
        })?;
        R::validate(&config).map_err(|err| err.within(R::NAME))?;
        Ok(config)
    }
}

impl<R: Role> RoleEntry for Entry<R> {
    fn name(&self) -> &'static str {
        R::NAME
    }

    fn default_section(&self) -> serde_json::Value {
        serde_json::to_value(R::Config::default()).unwrap_or(serde_json::Value::Null)
    }

    fn parse(&self, section: serde_json::Value) -> Result<serde_json::Value, ConfigError> {
        let config = Self::config(section)?;
        serde_json::to_value(&config)
            .map_err(|err| ConfigError::new(R::NAME, format!("cannot be shown: {err}")))
    }

    fn prepare(&self, section: serde_json::Value) -> Result<PreparedRole, ConfigError> {
        let config = Self::config(section)?;
        Ok(PreparedRole {
            name: R::NAME,
            start_after: R::start_after(),
            launch: Box::new(move |ctx| {
                Box::pin(async move {
                    let running = R::start(config, ctx).await?;
                    Ok(Box::new(running) as Box<dyn RunningRole>)
                })
            }),
        })
    }
}

/// The roles a binary knows, in registration order.
#[derive(Default)]
pub struct RoleSet {
    entries: Vec<Box<dyn RoleEntry>>,
}

impl RoleSet {
    /// An empty set.
    pub fn new() -> Self {
        RoleSet::default()
    }

    /// Adds role `R`. Panics if a role of the same name is already registered: that is a bug in
    /// the binary, not an input error.
    pub fn with<R: Role>(mut self) -> Self {
        assert!(
            !self.contains(R::NAME),
            "role `{}` registered twice",
            R::NAME
        );
        self.entries.push(Box::new(Entry::<R>(PhantomData)));
        self
    }

    /// Names of the known roles, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.name()).collect()
    }

    /// Whether a role called `name` is known.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name() == name)
    }

    /// Each known role's default section, by name.
    pub fn default_sections(&self) -> Vec<(&'static str, serde_json::Value)> {
        self.entries
            .iter()
            .map(|e| (e.name(), e.default_section()))
            .collect()
    }

    /// Parses and validates `section` for role `name`, returning its effective value (every
    /// default filled in).
    pub fn parse(
        &self,
        name: &str,
        section: serde_json::Value,
    ) -> Result<serde_json::Value, ConfigError> {
        self.entry(name)?.parse(section)
    }

    /// Parses and validates `section` for role `name`, ready to start.
    pub fn prepare(
        &self,
        name: &str,
        section: serde_json::Value,
    ) -> Result<PreparedRole, ConfigError> {
        self.entry(name)?.prepare(section)
    }

    fn entry(&self, name: &str) -> Result<&dyn RoleEntry, ConfigError> {
        self.entries
            .iter()
            .find(|e| e.name() == name)
            .map(|e| e.as_ref())
            .ok_or_else(|| {
                ConfigError::new(
                    "roles",
                    format!(
                        "unknown role `{name}`; valid roles: {}",
                        self.names().join(", ")
                    ),
                )
            })
    }
}

/// Orders `roles` so that each starts after the roles it names in `start_after` (when those
/// are selected too). Ties keep the order of `roles`. Errors on a cycle.
pub fn start_order(roles: &[PreparedRole]) -> Result<Vec<usize>, ConfigError> {
    let selected = |name: &str| roles.iter().position(|r| r.name == name);
    let mut order = Vec::with_capacity(roles.len());
    let mut placed = vec![false; roles.len()];
    while order.len() < roles.len() {
        let next = (0..roles.len()).find(|&i| {
            !placed[i]
                && roles[i]
                    .start_after
                    .iter()
                    .filter_map(|dep| selected(dep))
                    .all(|dep| placed[dep])
        });
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..roles.len())
                    .filter(|&i| !placed[i])
                    .map(|i| roles[i].name)
                    .collect();
                return Err(ConfigError::new(
                    "roles",
                    format!("roles {} depend on each other in a cycle", stuck.join(", ")),
                ));
            }
        }
    }
    Ok(order)
}
