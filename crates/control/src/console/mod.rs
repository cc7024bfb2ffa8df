//! The web console: one page (`GET /`) and its assets (`GET /console/NAME`), plain HTML, CSS
//! and JavaScript modules built into the binary. The page holds no data: it asks for the
//! node's token, keeps it in the tab's `sessionStorage`, and reads everything it shows from
//! the API (`/v1/...`) with it. [`crate::server::is_open`] lets the page and its assets through
//! without the token over TCP; every API call still needs it.
//!
//! Every answer carries a strict Content-Security-Policy ([`CSP`]): scripts, styles, images
//! and API calls come from the node itself, nothing inline, nothing from elsewhere, and the
//! page cannot be framed.

use std::hash::{Hash, Hasher};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;

/// The console's Content-Security-Policy: everything from the node itself (`'self'`), no
/// inline script or style, no plugins, no `<base>`, no form submissions (the token form is
/// handled by script: a token never ends up in a URL), no framing.
pub const CSP: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page, served at `/`.
const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// The assets, served under `/console/`.
const ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("node.js", JS),
    asset!("services.js", JS),
    asset!("logs.js", JS),
    asset!("broker.js", JS),
    asset!("chart.js", JS),
    asset!("cluster.js", JS),
    asset!("ipc.js", JS),
];

/// Mounts `GET /` and `GET /console/{name}`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/console/{name}", web::get().to(asset));
}

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, &INDEX)
}

async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => Ok(serve(&req, asset)),
        None => Err(ApiError::new(
            404,
            "no_such_route",
            format!("the console has no file {name:?}"),
        )),
    }
}

/// `asset` with its type and the console's headers; `304` when the browser has it already.
/// Browsers check again on every load (`no-cache`), so a new binary's console is seen at once.
fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let etag = etag(asset);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = match fresh {
        true => HttpResponse::NotModified(),
        false => HttpResponse::Ok(),
    };
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, etag));
    match fresh {
        true => response.finish(),
        false => response.content_type(asset.content_type).body(asset.body),
    }
}

/// A tag naming this build's version of `asset`.
fn etag(asset: &Asset) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    asset.body.hash(&mut hasher);
    format!("\"{}-{:016x}\"", env!("CARGO_PKG_VERSION"), hasher.finish())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use troupe_core::context::Published;

    use super::*;
    use crate::config::ControlConfig;
    use crate::server::{ControlServer, ControlSetup};
    use crate::state::NodeHandle;

    const TOKEN: &str = "console-test-token";

    /// A status, headers (names in lower case) and body.
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// One HTTP/1.1 exchange with `addr`; `extra` are more header lines.
    async fn http(addr: std::net::SocketAddr, method: &str, path: &str, extra: &str) -> Answer {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stream.read_to_end(&mut answer),
        )
        .await
        .expect("an answer in time")
        .unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// A control server listening on a free loopback port with [`TOKEN`].
    async fn server(dir: &tempfile::TempDir) -> (ControlServer, std::net::SocketAddr) {
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = ControlConfig {
            socket: dir.path().join("ctl.sock").display().to_string(),
            bind: "127.0.0.1:0".to_string(),
            token_file: token.display().to_string(),
            ..ControlConfig::default()
        };
        let (reloads, _) = tokio::sync::mpsc::channel(1);
        let server = ControlServer::start(ControlSetup {
            config,
            node: NodeHandle::new("console-test", "test"),
            published: Published::default(),
            reloads,
        })
        .await
        .expect("the control server starts");
        let addr = server.tcp_addr().expect("a TCP listener");
        (server, addr)
    }

    fn check_headers(answer: &Answer, path: &str, content_type: &str) {
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
        assert_eq!(
            answer.header("content-security-policy"),
            Some(CSP),
            "{path}"
        );
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{path}");
    }

    #[actix_rt::test]
    async fn the_console_needs_no_token_over_tcp_but_the_api_does() {
        let dir = tempfile::tempdir().unwrap();
        let (server, addr) = server(&dir).await;

        let page = http(addr, "GET", "/", "").await;
        check_headers(&page, "/", "text/html; charset=utf-8");
        assert!(
            page.body.contains("src=\"/console/app.js\""),
            "{}",
            page.body
        );
        for asset in ASSETS {
            let path = format!("/console/{}", asset.name);
            let answer = http(addr, "GET", &path, "").await;
            check_headers(&answer, &path, asset.content_type);
            assert_eq!(answer.body.as_bytes(), asset.body, "{path}");
            // Asked again with its tag: not sent again.
            let etag = answer.header("etag").expect("an ETag").to_string();
            let again = http(addr, "GET", &path, &format!("If-None-Match: {etag}\r\n")).await;
            assert_eq!(again.status, 304, "{path}");
        }
        let missing = http(addr, "GET", "/console/secrets.txt", "").await;
        assert_eq!(missing.status, 404, "{}", missing.body);
        let traversal = http(addr, "GET", "/console/..%2Ftoken", "").await;
        assert_eq!(traversal.status, 404, "{}", traversal.body);

        // The API still needs the token, the new route included; the page is open to GET only.
        for path in ["/v1/node", "/v1/services", "/v1/cluster/nodes"] {
            let answer = http(addr, "GET", path, "").await;
            assert_eq!(answer.status, 401, "{path}: {}", answer.body);
            assert!(answer.body.contains("unauthorized"), "{}", answer.body);
        }
        assert_eq!(http(addr, "POST", "/", "").await.status, 401);
        let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
        let node = http(addr, "GET", "/v1/node", &bearer).await;
        assert_eq!(node.status, 200, "{}", node.body);
        assert!(node.body.contains("console-test"), "{}", node.body);
        // No cluster client on this node: said so, as `/v1/cluster` does.
        let nodes = http(addr, "GET", "/v1/cluster/nodes", &bearer).await;
        assert_eq!(nodes.status, 404, "{}", nodes.body);
        assert!(nodes.body.contains("no_cluster_client"), "{}", nodes.body);
        server.stop().await;
    }

    /// Every file the page and its modules name is served, and nothing is loaded from
    /// elsewhere or inline.
    #[test]
    fn the_page_names_only_its_own_files() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        let page = std::str::from_utf8(INDEX.body).unwrap();
        let mut named = Vec::new();
        for attr in ["src=\"", "href=\""] {
            for part in page.split(attr).skip(1) {
                let target = part.split('"').next().unwrap();
                let file = target
                    .strip_prefix("/console/")
                    .unwrap_or_else(|| panic!("index.html names {target}, not a console file"));
                named.push(file.to_string());
            }
        }
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(asset.body).unwrap();
            for part in text.split(" from './").skip(1) {
                named.push(part.split('\'').next().unwrap().to_string());
            }
            assert!(
                !text.contains("import("),
                "{}: no dynamic imports",
                asset.name
            );
        }
        assert!(named.iter().any(|n| n == "app.js"), "{named:?}");
        for file in &named {
            assert!(names.contains(&file.as_str()), "{file} is not served");
        }
        // No inline script or style, no handler attributes.
        assert_eq!(
            page.matches("<script").count(),
            page.matches("<script type=\"module\" src=").count()
        );
        for inline in [" style=", "<style", " onclick=", " onload=", " onsubmit="] {
            assert!(!page.contains(inline), "index.html has {inline}");
        }
        for asset in ASSETS.iter().chain([&INDEX]) {
            let text = String::from_utf8_lossy(asset.body);
            assert!(
                !text.contains("https://") && !text.contains("//cdn"),
                "{} loads nothing from elsewhere",
                asset.name
            );
        }
    }
}
