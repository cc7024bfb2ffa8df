//! Runs a bare beacon on `tcp://127.0.0.1:PORT` (first argument) until stdin closes, for
//! measuring its memory from outside (`scripts`-style probes such as the hello-only flood in
//! `crates/beacon/examples/hello_flood.py`). A second argument `cookie` makes it require the
//! cookie `probe`.

use troupe_beacon::server::start_server;
use troupe_beacon::BeaconConfig;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: beacon_rss PORT [cookie]");
    let cookie = std::env::args()
        .nth(2)
        .filter(|a| a == "cookie")
        .and_then(|_| troupe_beacon::auth::Cookie::new("probe"));
    actix_rt::System::new().block_on(async move {
        let config = BeaconConfig {
            bind: format!("tcp://127.0.0.1:{port}").parse().unwrap(),
            ..BeaconConfig::default()
        };
        let (_server, _done) = start_server(&config, cookie).await.unwrap();
        println!("ready");
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin()
                .read_line(&mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await;
    });
}
