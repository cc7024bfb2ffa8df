//! The `troupe` binary: the node with every built-in role (and, built with the `etcd`
//! feature, the etcd cluster backend).

fn main() {
    #[cfg(feature = "etcd")]
    troupe_etcd::install();
    std::process::exit(troupe_node::main_with(troupe_node::roles::known_roles()));
}
