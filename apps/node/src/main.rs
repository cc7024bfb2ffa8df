//! The `troupe` binary: the node with every built-in role.

fn main() {
    std::process::exit(troupe_node::main_with(troupe_node::roles::known_roles()));
}
