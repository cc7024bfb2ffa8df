//! How `troupe ctl` shows the API's JSON to people: aligned tables and `key: value` lines.
//! Missing fields show as `-`, so that an older or newer node still prints.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

/// Columns separated by two spaces, each as wide as its widest cell.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// A field as text: strings bare, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds as `3h 2m`, `4m 10s`, `12s` or `250ms`.
fn span(value: &Value) -> String {
    let Some(ms) = value.as_u64() else {
        return "-".into();
    };
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC).
fn time(value: &Value) -> String {
    match value.as_u64() {
        Some(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        None => "-".into(),
    }
}

fn list(value: &Value) -> String {
    match value.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(text).collect::<Vec<_>>().join(", "),
        _ => "-".into(),
    }
}

/// ` (pid N)` when the answer names a pid.
pub(super) fn pid_note(value: &Value) -> String {
    match value["pid"].as_u64() {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}

fn state(service: &Value) -> String {
    let state = text(&service["state"]);
    match (
        service["waiting_for"].as_str(),
        service["restart_in_ms"].as_u64(),
    ) {
        (Some("restart"), Some(ms)) => format!("{state} (restart in {})", span(&Value::from(ms))),
        (Some(why), _) => format!("{state} ({why})"),
        _ => state,
    }
}

fn last_exit(service: &Value) -> String {
    let exit = &service["last_exit"];
    if exit.is_null() {
        return "-".into();
    }
    let mut shown = text(&exit["reason"]);
    if exit["requested"] == true {
        shown.push_str(" (requested)");
    }
    shown
}

/// A service's required resources and their providers: `broker: hub-1, hub-2; db: -`.
fn requirements(service: &Value) -> String {
    let Some(providers) = service["requirements"]["providers"].as_object() else {
        return "-".into();
    };
    providers
        .iter()
        .map(|(resource, nodes)| format!("{resource}: {}", list(nodes)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the broker says of a `ready = { broker = ... }` service:
/// `echo: ready, 2 workers, 0 queued`.
fn broker_view(service: &Value) -> String {
    let b = &service["broker"];
    if b.is_null() {
        return "-".into();
    }
    let said = match (b["known"].as_bool(), b["ready"].as_bool()) {
        (Some(false), _) => "unknown to the broker",
        (_, Some(true)) => "ready",
        _ => "not ready",
    };
    format!(
        "{}: {said}, {} workers, {} queued",
        text(&b["service"]),
        text(&b["workers"]),
        text(&b["queue_depth"])
    )
}

fn services_table(services: &Value) -> String {
    let rows: Vec<Vec<String>> = services["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                text(&s["id"]),
                state(s),
                text(&s["pid"]),
                text(&s["generation"]),
                span(&s["uptime_ms"]),
                text(&s["restarts"]),
                format!("{}/{}", text(&s["plan_position"]), text(&s["plan_length"])),
                last_exit(s),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no services\n".into();
    }
    table(
        &[
            "ID",
            "STATE",
            "PID",
            "GEN",
            "UPTIME",
            "RESTARTS",
            "PLAN POS",
            "LAST EXIT",
        ],
        &rows,
    )
}

pub(super) fn status(node: &Value, services: Option<&Value>, cluster: Option<&Value>) -> String {
    let mut out = String::new();
    let roles = node["roles"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| format!("{} {}", text(&r["name"]), text(&r["state"])))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "node     {} (pid {}, troupe {}, up {})",
        text(&node["name"]),
        text(&node["pid"]),
        text(&node["version"]),
        span(&node["uptime_ms"])
    );
    let _ = writeln!(out, "config   {}", text(&node["config_source"]));
    let _ = writeln!(
        out,
        "roles    {}",
        if roles.is_empty() { "-".into() } else { roles }
    );
    let _ = writeln!(out, "reloads  {}", text(&node["reloads"]));
    if let Some(client) = cluster.map(|c| &c["client"]) {
        let backend = client["backend"].as_str().unwrap_or("beacon");
        let links = client["beacons"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|b| match b["refusal"].as_str() {
                Some(why) => format!("{} {} ({why})", text(&b["endpoint"]), text(&b["state"])),
                None => format!("{} {}", text(&b["endpoint"]), text(&b["state"])),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(out, "cluster  {backend}: {links}");
    }
    if let Some(services) = services {
        out.push('\n');
        out.push_str(&services_table(services));
    }
    out
}

pub(super) fn services(value: &Value) -> String {
    services_table(value)
}

pub(super) fn service(s: &Value) -> String {
    let mut out = String::new();
    let rows = [
        ("id", text(&s["id"])),
        (
            "kind",
            format!("{} ({})", text(&s["kind"]), text(&s["child_type"])),
        ),
        ("state", state(s)),
        ("failure", text(&s["failure"])),
        ("pid", text(&s["pid"])),
        ("generation", text(&s["generation"])),
        ("started", time(&s["started_at_unix_ms"])),
        ("uptime", span(&s["uptime_ms"])),
        ("restarts", text(&s["restarts"])),
        ("plan", text(&s["plan"])),
        (
            "plan position",
            format!(
                "{} of {}",
                text(&s["plan_position"]),
                text(&s["plan_length"])
            ),
        ),
        (
            "cycle",
            format!("{} of count {}", text(&s["cycle"]), text(&s["count"])),
        ),
        ("containment", text(&s["containment"])),
        ("requirements", requirements(s)),
        ("broker", broker_view(s)),
        ("last exit", last_exit(s)),
        ("last exit at", time(&s["last_exit"]["at_unix_ms"])),
    ];
    for (key, value) in rows {
        let _ = writeln!(out, "{key:<14}{value}");
    }
    let _ = writeln!(out, "spec");
    for (key, value) in s["spec"].as_object().into_iter().flatten() {
        if !value.is_null() {
            let _ = writeln!(out, "  {key} = {value}");
        }
    }
    out
}

/// A JSON object shown as TOML (TOML has no null: those keys are left out).
pub(super) fn toml(value: &Value) -> String {
    fn strip(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    match toml::to_string_pretty(&strip(value)) {
        Ok(text) => text,
        Err(_) => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    }
}

pub(super) fn plan(p: &Value) -> String {
    format!(
        "{}: plan {} count {}; position {}, cycle {}, restarts {}\n",
        text(&p["id"]),
        serde_json::to_string(&p["plan"]).unwrap_or_default(),
        text(&p["count"]),
        text(&p["plan_position"]),
        text(&p["cycle"]),
        text(&p["restarts"]),
    )
}

fn log_line(line: &Value) -> String {
    format!(
        "{} {}[{}] {}\n",
        time(&line["at_unix_ms"]),
        text(&line["stream"]),
        text(&line["generation"]),
        line["text"].as_str().unwrap_or_default()
    )
}

pub(super) fn log_lines(value: &Value) -> String {
    value["lines"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(log_line)
        .collect()
}

/// One line of a follow stream, printed as it comes (an empty line is a keep-alive).
pub(super) fn follow_line(raw: &[u8], json: bool) {
    use std::io::Write;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let shown = match serde_json::from_slice::<Value>(raw) {
        Ok(value) if json => format!("{value}\n"),
        Ok(value) if value.get("skipped").is_some() => {
            format!(
                "... {} lines skipped (this reader fell behind)\n",
                text(&value["skipped"])
            )
        }
        Ok(value) => log_line(&value),
        Err(_) => format!("{}\n", String::from_utf8_lossy(raw)),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(shown.as_bytes());
    let _ = out.flush();
}

pub(super) fn broker(b: &Value) -> String {
    let services = b["services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let st = &s["stats"];
            vec![
                text(&s["name"]),
                text(&s["kind"]),
                text(&s["workers"]),
                text(&s["waiting"]),
                text(&s["held"]),
                text(&st["requests"]),
                text(&st["replies"]),
                text(&st["refused"]),
                text(&st["timed_out"]),
                text(&st["lost"]),
                text(&st["retried"]),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVICE",
            "KIND",
            "WORKERS",
            "QUEUED",
            "HELD",
            "REQUESTS",
            "REPLIES",
            "REFUSED",
            "TIMED OUT",
            "LOST",
            "RETRIED",
        ],
        &rows,
    );
    let workers: Vec<Vec<String>> = services
        .iter()
        .flat_map(|s| {
            s["worker_list"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(move |w| {
                    vec![
                        text(&s["name"]),
                        text(&w["identity"]),
                        match (w["service_id"].as_str(), w["pid"].as_u64()) {
                            (Some(id), Some(pid)) => format!("{id} (pid {pid})"),
                            _ => "-".to_string(),
                        },
                        text(&w["framing"]),
                        text(&w["credit"]),
                        text(&w["held"]),
                        format!("{} ago", span(&w["last_heard_ms_ago"])),
                    ]
                })
        })
        .collect();
    out.push('\n');
    if workers.is_empty() {
        out.push_str("no workers\n");
    } else {
        out.push_str(&table(
            &[
                "SERVICE",
                "WORKER",
                "SUPERVISED AS",
                "FRAMING",
                "CREDIT",
                "HELD",
                "LAST HEARD",
            ],
            &workers,
        ));
    }
    let _ = writeln!(
        out,
        "\nmalformed messages {}, undeliverable replies {}",
        text(&b["malformed"]),
        text(&b["undeliverable_replies"])
    );
    out
}

pub(super) fn ipc(v: &Value) -> String {
    let st = &v["stats"];
    let mut out = format!(
        "connections {} ({} registered), channels {}, held {} messages / {} bytes\n\
         delivered {}, held {}, expired {}, overflowed {}, corrupt bytes {}\n\n",
        text(&st["connections"]),
        text(&st["registered"]),
        text(&st["channels_attached"]),
        text(&st["mailbox_messages"]),
        text(&st["mailbox_bytes"]),
        text(&st["delivered"]),
        text(&st["held"]),
        text(&st["expired"]),
        text(&st["overflowed"]),
        text(&st["corrupt_bytes"]),
    );
    let rows: Vec<Vec<String>> = v["connections"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            vec![
                text(&c["pid"]),
                text(&c["uid"]),
                text(&c["name"]),
                text(&c["service"]),
                text(&c["registered"]),
                text(&c["outbox_bytes"]),
                text(&c["requests_in_flight"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no connections\n");
    } else {
        out.push_str(&table(
            &[
                "PID",
                "UID",
                "NAME",
                "SERVICE",
                "REGISTERED",
                "QUEUED BYTES",
                "REQUESTS",
            ],
            &rows,
        ));
    }
    let boxes: Vec<Vec<String>> = v["mailboxes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            vec![
                text(&m["receiver"]),
                text(&m["messages"]),
                text(&m["bytes"]),
            ]
        })
        .collect();
    if !boxes.is_empty() {
        out.push('\n');
        out.push_str(&table(&["MAILBOX", "MESSAGES", "BYTES"], &boxes));
    }
    out
}

pub(super) fn cluster(v: &Value) -> String {
    let client = &v["client"];
    let registration = &client["registration"];
    let mut out = String::new();
    let _ = writeln!(out, "node          {}", text(&client["node"]));
    let _ = writeln!(out, "resource      {}", text(&registration["resource"]));
    let _ = writeln!(out, "requires      {}", list(&registration["requires"]));
    let _ = writeln!(
        out,
        "requirements  {} {}",
        text(&client["requirements"]),
        list(&client["unmet"])
    );
    let etcd = client["backend"] == "etcd";
    if let Some(error) = v["requirements"]["error"].as_str() {
        let from = if etcd { "etcd" } else { "beacons" };
        let _ = writeln!(out, "              ({from}: {error})");
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = client["beacons"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|b| {
            vec![
                text(&b["endpoint"]),
                text(&b["state"]),
                match b["last_heard_ms_ago"].as_u64() {
                    Some(ms) => format!("{} ago", span(&Value::from(ms))),
                    None => "never".into(),
                },
                text(&b["refusal"]),
            ]
        })
        .collect();
    let first = if etcd { "ETCD" } else { "BEACON" };
    out.push_str(&table(&[first, "STATE", "LAST HEARD", "REFUSAL"], &rows));
    out
}

pub(super) fn reload(r: &Value) -> String {
    let dry = r["dry_run"] == true;
    let done = |what: &str| match dry {
        true => format!("would be {what}"),
        false => what.to_string(),
    };
    let mut out = format!(
        "{}reload of {}\n",
        if dry { "dry run: " } else { "" },
        text(&r["config_source"])
    );
    for role in ["supervisor", "broker"] {
        let part = &r[role];
        for (key, what) in [
            ("added", "added"),
            ("removed", "removed"),
            ("changed", "restarted with a new spec"),
        ] {
            if part[key].as_array().is_some_and(|a| !a.is_empty()) {
                let _ = writeln!(out, "{role}: {}: {}", done(what), list(&part[key]));
            }
        }
        for failure in part["failed"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let _ = writeln!(
                out,
                "{role}: {} not applied: {}",
                text(&failure["id"]),
                text(&failure["error"])
            );
        }
    }
    if let Some(level) = r["log_level"].as_object() {
        let _ = writeln!(
            out,
            "log filter {}: {} -> {}",
            done("changed"),
            text(&level["from"]),
            text(&level["to"])
        );
    }
    if r["needs_restart"].as_array().is_some_and(|a| !a.is_empty()) {
        let _ = writeln!(
            out,
            "needs a node restart (left as is): {}",
            list(&r["needs_restart"])
        );
    }
    if r["changes"] == 0 {
        out.push_str("nothing to change\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_missing_fields_show_as_dashes() {
        let shown = services(&json!({ "services": [
            { "id": "echo", "state": "running", "pid": 42, "generation": 1, "uptime_ms": 61000,
              "restarts": 0, "plan_position": 0, "plan_length": 1 },
            { "id": "a-longer-name", "state": "waiting", "waiting_for": "start" }
        ]}));
        let lines: Vec<&str> = shown.lines().collect();
        assert!(lines[0].starts_with("ID             STATE"), "{shown}");
        assert!(
            lines[1].contains("echo") && lines[1].contains("1m 1s"),
            "{shown}"
        );
        assert!(
            lines[2].contains("waiting (start)") && lines[2].contains(" - "),
            "{shown}"
        );
        assert_eq!(services(&json!({ "services": [] })), "no services\n");
    }

    #[test]
    fn waiting_for_requirements_shows_what_is_missing_and_who_provides() {
        let waiting = json!({
            "id": "app", "state": "waiting_for_requirements", "waiting_for": "broker, db",
            "requirements": { "unmet": ["broker", "db"], "providers": { "broker": [], "db": [] } }
        });
        let shown = services(&json!({ "services": [waiting] }));
        assert!(
            shown.contains("waiting_for_requirements (broker, db)"),
            "{shown}"
        );
        let detail = service(&waiting);
        assert!(
            detail.contains("requirements  broker: -; db: -"),
            "{detail}"
        );
        let running = json!({
            "id": "app", "state": "ready",
            "requirements": { "unmet": [], "providers": { "broker": ["hub-1", "hub-2"] } },
            "broker": { "service": "echo", "known": true, "ready": true, "workers": 2, "queue_depth": 0 }
        });
        let detail = service(&running);
        assert!(
            detail.contains("requirements  broker: hub-1, hub-2"),
            "{detail}"
        );
        assert!(
            detail.contains("broker        echo: ready, 2 workers, 0 queued"),
            "{detail}"
        );
        // An older node sends neither: dashes.
        let detail = service(&json!({ "id": "old", "state": "running" }));
        assert!(detail.contains("requirements  -"), "{detail}");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(&json!(250)), "250ms");
        assert_eq!(span(&json!(12_000)), "12s");
        assert_eq!(span(&json!(3_725_000)), "1h 2m");
        assert_eq!(span(&json!(null)), "-");
    }
}
