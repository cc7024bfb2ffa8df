//! `/v1/services…` and `/v1/supervisor/…`: the supervisor's children as an operator sees and
//! steers them. Every action maps to one supervisor message; director's refusals come back as
//! [`ApiError`]s naming the service and the rule.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use troupe_core::services::{Invoke, PushConfig};
use troupe_supervisor::config::{DefaultConfig, ServiceConfig};
use troupe_supervisor::messages::*;
use troupe_supervisor::{Count, LogLine, Plan, PlanElement, Supervisor};

use super::{ask, duration, Api, ACTION_WAIT, READ_WAIT};
use crate::error::ApiError;

/// Lines `logs` returns when the request names no number.
const DEFAULT_LOG_LINES: usize = 100;
/// Most lines one `logs` request returns.
const MAX_LOG_LINES: usize = 100_000;
/// A follow stream quiet for this long sends an empty line, so that a client that went away
/// is noticed and its stream ended.
const FOLLOW_KEEPALIVE: Duration = Duration::from_secs(5);
/// Default wait for a service's answer to `config` and `invoke`.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a service's answer a caller may ask for.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services", web::get().to(list))
        .route("/services", web::post().to(add))
        .route("/services/{id}", web::get().to(one))
        .route("/services/{id}", web::delete().to(delete))
        .route("/services/{id}/start", web::post().to(start))
        .route("/services/{id}/stop", web::post().to(stop))
        .route("/services/{id}/restart", web::post().to(restart))
        .route("/services/{id}/signal", web::post().to(signal))
        .route("/services/{id}/plan", web::get().to(get_plan))
        .route("/services/{id}/plan", web::put().to(set_plan))
        .route("/services/{id}/logs", web::get().to(logs))
        .route("/services/{id}/config", web::post().to(push_config))
        .route("/services/{id}/invoke", web::post().to(invoke))
        .route("/supervisor/default-spec", web::get().to(get_default))
        .route("/supervisor/default-spec", web::put().to(set_default));
}

fn supervisor(api: &Api) -> Result<Addr<Supervisor>, ApiError> {
    api.actor::<Supervisor>("supervisor")
}

async fn list(api: web::Data<Api>) -> Result<HttpResponse, ApiError> {
    let services = ask(&supervisor(&api)?, "supervisor", ServiceStatuses, READ_WAIT).await?;
    Ok(HttpResponse::Ok().json(json!({ "services": services })))
}

async fn one(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let status = ask(
        &supervisor(&api)?,
        "supervisor",
        GetServiceStatus(id.into_inner()),
        READ_WAIT,
    )
    .await??;
    Ok(HttpResponse::Ok().json(status))
}

async fn add(
    api: web::Data<Api>,
    spec: web::Json<ServiceConfig>,
) -> Result<HttpResponse, ApiError> {
    let spec = spec.into_inner();
    let id = spec.id.clone().unwrap_or_default();
    let pid = ask(
        &supervisor(&api)?,
        "supervisor",
        AddService(spec),
        ACTION_WAIT,
    )
    .await??;
    Ok(HttpResponse::Created().json(json!({ "id": id, "pid": pid })))
}

async fn delete(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    ask(
        &supervisor(&api)?,
        "supervisor",
        DeleteChild(id.clone()),
        ACTION_WAIT,
    )
    .await??;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "deleted": true })))
}

async fn start(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let pid = ask(
        &supervisor(&api)?,
        "supervisor",
        RestartChild(id.clone()),
        ACTION_WAIT,
    )
    .await??;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "pid": pid })))
}

async fn stop(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    ask(
        &supervisor(&api)?,
        "supervisor",
        TerminateChild(id.clone()),
        ACTION_WAIT,
    )
    .await??;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "stopped": true })))
}

async fn restart(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let pid = ask(
        &supervisor(&api)?,
        "supervisor",
        RestartService(id.clone()),
        ACTION_WAIT,
    )
    .await??;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "pid": pid })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalBody {
    signal: Value,
}

async fn signal(
    api: web::Data<Api>,
    id: web::Path<String>,
    body: web::Json<SignalBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let signal = parse_signal(&body.signal).map_err(|e| e.for_service(&id))?;
    let msg = SignalChild {
        id: id.clone(),
        signal: signal as i32,
    };
    ask(&supervisor(&api)?, "supervisor", msg, ACTION_WAIT).await??;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "signal": signal.as_str() })))
}

/// A signal by name (`HUP`, `SIGHUP`, `hup`) or number (`1`).
fn parse_signal(value: &Value) -> Result<nix::sys::signal::Signal, ApiError> {
    use nix::sys::signal::Signal;
    let bad = |shown: String| {
        ApiError::bad_request(
            "bad_signal",
            format!(
                "{shown} is not a signal; give a name like \"TERM\", \"HUP\", \"USR1\" or a number"
            ),
        )
    };
    match value {
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| bad(n.to_string())),
        Value::String(text) => {
            let upper = text.trim().to_ascii_uppercase();
            if let Ok(n) = upper.parse::<i32>() {
                return Signal::try_from(n).map_err(|_| bad(format!("\"{text}\"")));
            }
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            Signal::from_str(&name).map_err(|_| bad(format!("\"{text}\"")))
        }
        other => Err(bad(other.to_string())),
    }
}

async fn get_plan(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let status = ask(
        &supervisor(&api)?,
        "supervisor",
        GetServiceStatus(id.clone()),
        READ_WAIT,
    )
    .await??;
    let plan = ask(
        &supervisor(&api)?,
        "supervisor",
        GetPlan(id.clone()),
        READ_WAIT,
    )
    .await??;
    Ok(HttpResponse::Ok().json(json!({
        "id": id,
        "plan": plan,
        "count": status.spec.get("count").cloned().unwrap_or(Value::Null),
        "plan_position": status.plan_position,
        "cycle": status.cycle,
        "restarts": status.restarts,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    plan: Plan,
    #[serde(default)]
    count: Option<Count>,
}

async fn set_plan(
    api: web::Data<Api>,
    id: web::Path<String>,
    body: web::Json<PlanBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let PlanBody { plan, count } = body.into_inner();
    check_plan(&plan).map_err(|e| e.for_service(&id))?;
    let shown = plan.to_string();
    let msg = ChangePlan {
        id: id.clone(),
        plan,
        count,
    };
    ask(&supervisor(&api)?, "supervisor", msg, ACTION_WAIT).await??;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "plan": shown, "counters_reset": true })))
}

fn check_plan(plan: &Plan) -> Result<(), ApiError> {
    for (i, element) in plan.0.iter().enumerate() {
        if let PlanElement::RestartBackoff(backoff) = element {
            backoff
                .check()
                .map_err(|why| ApiError::bad_request("invalid", format!("plan[{i}]: {why}")))?;
        }
    }
    Ok(())
}

async fn get_default(api: web::Data<Api>) -> Result<HttpResponse, ApiError> {
    let default = ask(
        &supervisor(&api)?,
        "supervisor",
        GetDefaultChildSpec,
        READ_WAIT,
    )
    .await?;
    Ok(HttpResponse::Ok().json(DefaultConfig::from(&default)))
}

async fn set_default(
    api: web::Data<Api>,
    body: web::Json<DefaultConfig>,
) -> Result<HttpResponse, ApiError> {
    let default = body.into_inner();
    default
        .check()
        .map_err(|why| ApiError::bad_request("invalid", format!("default spec: {why}")))?;
    let spec = default.to_spec();
    ask(
        &supervisor(&api)?,
        "supervisor",
        ChangeDefaultChildSpec(spec),
        ACTION_WAIT,
    )
    .await?;
    Ok(HttpResponse::Ok().json(default))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    lines: Option<usize>,
    #[serde(default)]
    follow: Option<String>,
}

async fn logs(
    api: web::Data<Api>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let lines = query.lines.unwrap_or(DEFAULT_LOG_LINES).min(MAX_LOG_LINES);
    let follow = matches!(query.follow.as_deref(), Some("1" | "true" | "yes"));
    let permit = match follow {
        true => Some(api.followers.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                503,
                "too_many_followers",
                format!(
                    "{} log streams are open already; try again later",
                    super::MAX_FOLLOWERS
                ),
            )
        })?),
        false => None,
    };
    let msg = GetLogs {
        id: id.clone(),
        lines,
        follow,
    };
    let logs = ask(&supervisor(&api)?, "supervisor", msg, READ_WAIT).await??;
    let Some(receiver) = logs.follow else {
        return Ok(HttpResponse::Ok().json(json!({ "id": id, "lines": logs.lines })));
    };
    // NDJSON: the snapshot's lines, then every new line; `{"skipped": N}` when the reader
    // fell behind and N lines went by unread; an empty line when nothing happened for a while.
    let head = futures::stream::iter(
        logs.lines
            .into_iter()
            .map(|line| Ok::<_, std::io::Error>(ndjson(&json!(line)))),
    );
    let tail = futures::stream::unfold((receiver, permit), |(mut receiver, permit)| async move {
        let chunk = match tokio::time::timeout(FOLLOW_KEEPALIVE, receiver.recv()).await {
            Ok(Ok(line)) => ndjson(&json!(Arc::as_ref(&line) as &LogLine)),
            Ok(Err(RecvError::Lagged(skipped))) => ndjson(&json!({ "skipped": skipped })),
            Ok(Err(RecvError::Closed)) => return None,
            Err(_) => Bytes::from_static(b"\n"),
        };
        Some((Ok(chunk), (receiver, permit)))
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(head.chain(tail)))
}

fn ndjson(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallQuery {
    #[serde(default)]
    timeout: Option<String>,
}

fn call_timeout(given: Option<&str>) -> Result<Duration, ApiError> {
    let timeout = match given {
        Some(text) => duration("timeout", text)?,
        None => DEFAULT_CALL_TIMEOUT,
    };
    if timeout.is_zero() || timeout > MAX_CALL_TIMEOUT {
        return Err(ApiError::bad_request(
            "bad_duration",
            format!(
                "timeout: must be more than 0 and at most {}s",
                MAX_CALL_TIMEOUT.as_secs()
            ),
        ));
    }
    Ok(timeout)
}

/// Fails with 404 when the supervisor has no such service (rather than "channel not alive").
async fn known(api: &Api, id: &str) -> Result<Addr<Supervisor>, ApiError> {
    let supervisor = supervisor(api)?;
    ask(
        &supervisor,
        "supervisor",
        GetServiceStatus(id.to_string()),
        READ_WAIT,
    )
    .await??;
    Ok(supervisor)
}

async fn push_config(
    api: web::Data<Api>,
    id: web::Path<String>,
    query: web::Query<CallQuery>,
    config: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let timeout = call_timeout(query.timeout.as_deref())?;
    let supervisor = known(&api, &id).await?;
    let msg = PushConfig {
        service: id.clone(),
        config: config.into_inner(),
        timeout,
    };
    ask(&supervisor, "supervisor", msg, timeout + READ_WAIT)
        .await?
        .map_err(|e| ApiError::from(e).for_service(&id))?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "acknowledged": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeBody {
    method: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    timeout: Option<String>,
}

/// The payload a service receives: `{"method": …, "params": …}` as JSON. Its answer is
/// returned as JSON when it is JSON, else as a string.
async fn invoke(
    api: web::Data<Api>,
    id: web::Path<String>,
    body: web::Json<InvokeBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let InvokeBody {
        method,
        params,
        timeout,
    } = body.into_inner();
    if method.is_empty() {
        return Err(
            ApiError::bad_request("bad_method", "method: must not be empty").for_service(&id),
        );
    }
    let timeout = call_timeout(timeout.as_deref())?;
    let supervisor = known(&api, &id).await?;
    let payload = serde_json::to_vec(&json!({ "method": method, "params": params }))
        .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    let msg = Invoke {
        service: id.clone(),
        payload,
        timeout,
    };
    let answer = ask(&supervisor, "supervisor", msg, timeout + READ_WAIT)
        .await?
        .map_err(|e| ApiError::from(e).for_service(&id))?;
    let result = serde_json::from_slice::<Value>(&answer)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
    Ok(HttpResponse::Ok().json(json!({ "id": id, "method": method, "result": result })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_any_common_way() {
        use nix::sys::signal::Signal;
        for text in ["HUP", "SIGHUP", "hup", "1"] {
            assert_eq!(
                parse_signal(&json!(text)).unwrap(),
                Signal::SIGHUP,
                "{text}"
            );
        }
        assert_eq!(parse_signal(&json!(10)).unwrap(), Signal::SIGUSR1);
        for bad in [json!("BOGUS"), json!(0), json!(999), json!(null), json!("")] {
            let err = parse_signal(&bad).unwrap_err();
            assert_eq!(err.code, "bad_signal", "{bad}");
        }
    }
}
