//! `troupe cluster …`: operator commands that ask the beacons named in the `[cluster]` table
//! (or given with `--beacon`), or etcd with `backend = "etcd"`, through a cluster client that
//! registers nothing.
//!
//! ```text
//! troupe cluster list                       every node, online and offline, with every resource
//! troupe cluster lookup broker              the online nodes offering `broker`, with its endpoints
//! troupe cluster requirements edge-1        what edge-1 needs and who offers it
//! troupe cluster watch broker [--since E:R] changes as they happen
//! ```
//!
//! Output is a table, or JSON with `--json`: the nodes as the protocol has them (one document;
//! for `watch`, one line per event).
//! Exit codes: 0 answered, 1 no beacon answered (or refused), 2 usage or config error.

use std::io::Write;
use std::path::PathBuf;

use actix::prelude::*;
use serde_json::json;
use tokio::sync::oneshot;
use troupe_core::settings::ZmqEndpoint;

use crate::client::{
    start_client, ClientError, ClusterConfig, ClusterEvent, GetRequirementsOf, ListNodes,
    LookupResource, Requirements, Subscribe,
};
use crate::protocol::{EventKind, Node, NodeView, Position, Status};

/// Flags of `troupe cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Node config whose `[cluster]` table names the beacons and the cookie, or etcd
    /// (default: the embedded single-machine config).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Ask this beacon instead of the configured ones (repeat for several).
    #[arg(long = "beacon", value_name = "ENDPOINT", global = true)]
    pub beacons: Vec<ZmqEndpoint>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log filter for diagnostics on stderr (default: warn).
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,
    /// What to ask.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// The questions `troupe cluster` asks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// Every registered node, online and offline, with every resource it offers and how long
    /// ago it was heard.
    List,
    /// The online nodes offering a resource, with their endpoints for it.
    Lookup {
        /// The resource (a role name).
        resource: String,
    },
    /// A node's requirements and the online nodes offering each.
    Requirements {
        /// The node.
        node: String,
    },
    /// Print changes to some resources (all when none given) as they happen, until
    /// interrupted.
    Watch {
        /// Resources to watch.
        resources: Vec<String>,
        /// Resume after this position (EPOCH:REV, printed with every event).
        #[arg(long, value_name = "EPOCH:REV")]
        since: Option<Position>,
        /// Exit after this many events (a snapshot counts as one).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// Runs a `troupe cluster` command as node `node` with the node's `[cluster]` table; returns
/// the exit code.
pub fn run(args: ClusterArgs, mut cluster: ClusterConfig, node: &str) -> i32 {
    if !args.beacons.is_empty() {
        cluster = cluster.with_beacons(args.beacons.clone());
    }
    if !cluster.runs_client() {
        eprintln!(
            "troupe: no beacon to ask: set `beacons` in the config's [cluster] table or pass --beacon"
        );
        return 2;
    }
    let node = format!("{node}.cli");
    actix_rt::System::new().block_on(async move {
        let (client, thread_done) = match start_client(&cluster, &node, false).await {
            Ok(started) => started,
            Err(err) => {
                eprintln!("troupe: {err}");
                return 1;
            }
        };
        let code = match args.command {
            ClusterCommand::List => print_nodes(client.list.send(ListNodes).await, None, args.json),
            ClusterCommand::Lookup { resource } => {
                let answer = client.lookup.send(LookupResource(resource.clone())).await;
                print_nodes(answer, Some(&resource), args.json)
            }
            ClusterCommand::Requirements { node } => print_requirements(
                client.requirements_of.send(GetRequirementsOf(node)).await,
                args.json,
            ),
            ClusterCommand::Watch {
                resources,
                since,
                count,
            } => watch(&client, resources, since, count, args.json).await,
        };
        let _ = client.shutdown.send(troupe_core::Shutdown).await;
        let _ = thread_done.await;
        code
    })
}

fn failed(err: impl std::fmt::Display) -> i32 {
    eprintln!("troupe: {err}");
    1
}

/// Prints `nodes`: with `resource` (a lookup), each node's endpoints for it; without, every
/// resource's endpoints, as `resource:name=address`.
fn print_nodes(
    answer: Result<Result<Vec<Node>, ClientError>, MailboxError>,
    resource: Option<&str>,
    json: bool,
) -> i32 {
    let nodes = match answer {
        Ok(Ok(nodes)) => nodes,
        Ok(Err(err)) => return failed(err),
        Err(err) => return failed(err),
    };
    if json {
        println!("{}", json!({ "nodes": nodes }));
        return 0;
    }
    println!(
        "{:<24} {:<32} {:<8} {:>10}  ENDPOINTS",
        "NAME", "RESOURCES", "STATUS", "LAST SEEN"
    );
    for node in &nodes {
        let seen = node
            .last_seen_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let shown = match resource {
            Some(resource) => endpoints_of(node, resource),
            None => all_endpoints(node),
        };
        println!(
            "{:<24} {:<32} {:<8} {:>10}  {}",
            node.name,
            resources(node),
            status(node.status),
            seen,
            shown
        );
    }
    0
}

fn print_requirements(
    answer: Result<Result<Requirements, ClientError>, MailboxError>,
    json: bool,
) -> i32 {
    let requirements = match answer {
        Ok(Ok(requirements)) => requirements,
        Ok(Err(err)) => return failed(err),
        Err(err) => return failed(err),
    };
    if json {
        println!(
            "{}",
            json!({
                "node": requirements.node,
                "offers": requirements.offers,
                "unmet": requirements.unmet,
            })
        );
        return 0;
    }
    if requirements.offers.is_empty() {
        println!("{} requires nothing", requirements.node);
    }
    for (role, nodes) in &requirements.offers {
        if nodes.is_empty() {
            println!("{role}: no online provider");
        }
        for node in nodes {
            println!("{role}: {}  {}", node.name, endpoints_of(node, role));
        }
    }
    0
}

fn status(status: Status) -> &'static str {
    match status {
        Status::Online => "online",
        Status::Offline => "offline",
    }
}

fn kind(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Nodeup => "nodeup",
        EventKind::Nodedown => "nodedown",
        EventKind::Changed => "changed",
        EventKind::Removed => "removed",
    }
}

/// The resources a node offers, comma-separated.
fn resources(node: &NodeView) -> String {
    node.resources().collect::<Vec<_>>().join(",")
}

/// A node's endpoints for `resource`: `name=address …`.
fn endpoints_of(node: &NodeView, resource: &str) -> String {
    node.endpoints_for(resource)
        .into_iter()
        .flatten()
        .map(|(name, address)| format!("{name}={address}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every endpoint of every resource a node offers: `resource:name=address …`.
fn all_endpoints(node: &NodeView) -> String {
    node.resources()
        .flat_map(|resource| {
            node.endpoints_for(resource)
                .into_iter()
                .flatten()
                .map(move |(name, address)| format!("{resource}:{name}={address}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints each event it receives; reports when `remaining` reaches zero.
struct Printer {
    json: bool,
    remaining: Option<u64>,
    done: Option<oneshot::Sender<()>>,
}

impl Actor for Printer {
    type Context = Context<Self>;
}

impl Handler<ClusterEvent> for Printer {
    type Result = ();

    fn handle(&mut self, event: ClusterEvent, _: &mut Self::Context) {
        let line = match (&event, self.json) {
            (ClusterEvent::Snapshot { beacon, position, nodes }, true) => json!({
                "snapshot": true, "beacon": beacon, "epoch": position.epoch, "rev": position.rev, "nodes": nodes,
            })
            .to_string(),
            (ClusterEvent::Change { beacon, epoch, event }, true) => json!({
                "beacon": beacon, "epoch": epoch, "rev": event.rev, "kind": event.kind, "node": event.node,
            })
            .to_string(),
            (ClusterEvent::Snapshot { position, nodes, .. }, false) => {
                let mut text = format!("snapshot at {position}: {} nodes", nodes.len());
                for node in nodes {
                    text.push_str(&format!(
                        "\n  {} {} {} {}",
                        node.name,
                        resources(node),
                        status(node.status),
                        endpoints_of(node, &node.resource)
                    ));
                }
                text
            }
            (ClusterEvent::Change { event: change, .. }, false) => format!(
                "{} {} {} {} {}",
                event.position(),
                kind(change.kind),
                change.node.name,
                resources(&change.node),
                endpoints_of(&change.node, &change.node.resource)
            ),
        };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                if let Some(done) = self.done.take() {
                    let _ = done.send(());
                }
            }
        }
    }
}

async fn watch(
    client: &crate::client::ClusterClientHandle,
    resources: Vec<String>,
    since: Option<Position>,
    count: Option<u64>,
    json: bool,
) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let (done_tx, done_rx) = oneshot::channel();
    let printer = Printer {
        json,
        remaining: count,
        done: Some(done_tx),
    }
    .start();
    let subscribe = Subscribe {
        resources,
        since,
        recipient: printer.recipient(),
    };
    match client.subscribe.send(subscribe).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return failed(err),
        Err(err) => return failed(err),
    }
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return failed("cannot listen for signals");
    };
    tokio::select! {
        _ = done_rx => {}
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_show_every_resource_or_the_one_looked_up() {
        let node: NodeView = serde_json::from_value(json!({
            "name": "hub", "resource": "ipc", "requires": [], "endpoints": {"sock": "ipc:///s"},
            "offers": {"ipc": {"sock": "ipc:///s"}, "broker": {"frontend": "tcp://h:1"}, "beacon": {}},
            "metadata": {}, "status": "online", "heartbeat_ms": 1000
        }))
        .unwrap();
        assert_eq!(resources(&node), "beacon,broker,ipc");
        assert_eq!(endpoints_of(&node, "broker"), "frontend=tcp://h:1");
        assert_eq!(endpoints_of(&node, "nothing"), "");
        assert_eq!(
            all_endpoints(&node),
            "broker:frontend=tcp://h:1 ipc:sock=ipc:///s"
        );
    }
}
