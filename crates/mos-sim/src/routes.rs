//! The HTTP surface: the link route (the simulated endpoint), `/healthz`,
//! and, when asked for, the `/_sim/*` control routes (JSON, no auth).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::faults::{Action, Decision, Faults};
use super::state::{Admission, Counters, Shared};

/// Put in each request's extensions by the server: cancelling it makes the
/// connection task drop the connection without answering.
#[derive(Clone)]
pub(crate) struct ConnKill(pub CancellationToken);

/// Request bodies are two short ids; anything bigger is a client bug.
const MAX_BODY: usize = 64 * 1024;

const CREATED: &str = r#"{"message":"Success","outcome":"created"}"#;
const ALREADY_LINKED: &str = r#"{"message":"Success","outcome":"already_linked"}"#;
const PLAIN_SUCCESS: &str = r#"{"message":"Success"}"#;
const REQUIRED: &str = r#"{"message":"'anonymousIdentifier' and 'userIdentifier' are required"}"#;
const UNAUTHORIZED: &str = r#"{"message":"Unauthorized"}"#;

/// Without `control_routes` every `/_sim/*` path falls through to axum's
/// default 404, as any unknown path does.
pub(crate) fn router(shared: Arc<Shared>, control_routes: bool) -> Router {
    let endpoint = Router::new()
        .route(
            "/api/v1/envs/{env}/endpoints/link-identities",
            post(link_identities),
        )
        // Always on: a container healthcheck must not need the control routes.
        .route("/healthz", get(healthz));
    let router = if control_routes {
        endpoint.merge(control())
    } else {
        endpoint
    };
    router.with_state(shared)
}

fn control() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/links", get(links))
        .route(
            "/_sim/faults",
            get(get_faults).put(put_faults).delete(delete_faults),
        )
        .route("/_sim/key", put(put_key))
        .route("/_sim/reset", post(reset))
        .route("/_sim/healthz", get(healthz))
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.into(),
    )
        .into_response()
}

fn message(status: StatusCode, text: &str) -> Response {
    json(status, serde_json::json!({ "message": text }).to_string())
}

/// Every answer of the link route goes through here so it is counted.
fn answer(shared: &Shared, status: StatusCode, body: impl Into<Body>) -> Response {
    shared.counters.count_status(status.as_u16());
    json(status, body)
}

/// [`answer`] with a `{"message": text}` body.
fn answer_message(shared: &Shared, status: StatusCode, text: &str) -> Response {
    shared.counters.count_status(status.as_u16());
    message(status, text)
}

async fn link_identities(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    Counters::bump(&shared.counters.requests);

    // The gateway's rate limit, then the backend's capacity, both answered
    // at once (no latency). `_in_flight` counts this request until it ends.
    let (_in_flight, decision) = match shared.admit() {
        Admission::RateLimited { retry_after_secs } => {
            return rate_limited(&shared, retry_after_secs);
        }
        Admission::Overloaded {
            in_flight: _in_flight,
            retry_after_secs,
        } => return overloaded(&shared, retry_after_secs),
        Admission::Admitted {
            in_flight,
            decision,
        } => (in_flight, decision),
    };

    if let Some(decision) = decision {
        if !decision.delay.is_zero() {
            tokio::time::sleep(decision.delay).await;
        }
        match decision.action {
            Action::Pass => {}
            Action::Status(code) => return fault_response(&shared, code, &decision),
            Action::Drop => {
                let kill = req.extensions().get::<ConnKill>().cloned();
                return drop_connection(&shared, kill).await;
            }
        }
    }

    let key = req.headers().get("x-mos-key").map(HeaderValue::as_bytes);
    if !shared.authorized(key) {
        return answer(&shared, StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    }

    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            let text = format!("Could not read request body: {e}");
            return answer_message(&shared, StatusCode::BAD_REQUEST, &text);
        }
    };
    if let Some(code) = shared.refusal(&body) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN);
        return answer_message(&shared, status, "Request blocked by the firewall");
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            let text = format!("Invalid JSON body: {e}");
            return answer_message(&shared, StatusCode::BAD_REQUEST, &text);
        }
    };
    // A non-string or empty value counts as missing, like the real workflow.
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(anonymous), Some(user)) = (field("anonymousIdentifier"), field("userIdentifier"))
    else {
        return answer(&shared, StatusCode::BAD_REQUEST, REQUIRED);
    };

    if shared.store.is_linked(anonymous, user) {
        Counters::bump(&shared.counters.already_linked);
        let body = if shared.plain_success {
            PLAIN_SUCCESS
        } else {
            ALREADY_LINKED
        };
        return answer(&shared, StatusCode::OK, body);
    }

    // The race window: no lock is held, so identical concurrent requests all
    // pass the check above and all create below.
    let pause = shared.pause();
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    if shared.store.create(anonymous, user) {
        Counters::bump(&shared.counters.duplicates);
    }
    Counters::bump(&shared.counters.creates);
    let body = if shared.plain_success {
        PLAIN_SUCCESS
    } else {
        CREATED
    };
    answer(&shared, StatusCode::OK, body)
}

/// The rate limiter's 429: `Retry-After` in whole seconds, as real APIs send it.
fn rate_limited(shared: &Shared, retry_after_secs: u64) -> Response {
    Counters::bump(&shared.counters.rate_limited);
    let mut response = answer_message(shared, StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The capacity's 503, with `Retry-After` only if one is configured.
fn overloaded(shared: &Shared, retry_after_secs: Option<u64>) -> Response {
    Counters::bump(&shared.counters.overloaded);
    let mut response = answer_message(
        shared,
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
    );
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn fault_response(shared: &Shared, code: u16, decision: &Decision) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Injected fault");
    let mut response = answer_message(shared, status, reason);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let value = if decision.retry_after_http_date {
            let at = SystemTime::now() + Duration::from_secs(decision.retry_after_secs);
            httpdate::fmt_http_date(at)
        } else {
            decision.retry_after_secs.to_string()
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
    }
    response
}

async fn drop_connection(shared: &Shared, kill: Option<ConnKill>) -> Response {
    match kill {
        Some(kill) => {
            kill.0.cancel();
            // The connection task drops this future together with the
            // connection; never answering is the point.
            std::future::pending::<Response>().await
        }
        // Only reachable when the router is served by something other than
        // `MosSim`'s accept loop, which cannot drop connections.
        None => answer(
            shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"message":"drop fault needs the mos-sim server"}"#,
        ),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.stats()).into_response()
}

async fn links(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.store.snapshot()).into_response()
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.faults()).into_response()
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    // An empty body means "no faults", like DELETE.
    let faults = if body.iter().all(u8::is_ascii_whitespace) {
        Faults::default()
    } else {
        match serde_json::from_slice::<Faults>(&body) {
            Ok(faults) => faults,
            Err(e) => return message(StatusCode::BAD_REQUEST, &format!("Invalid faults: {e}")),
        }
    };
    if let Err(e) = faults.validate() {
        return message(StatusCode::BAD_REQUEST, &format!("Invalid faults: {e}"));
    }
    tracing::info!(?faults, "mos-sim faults replaced");
    shared.set_faults(faults);
    axum::Json(shared.faults()).into_response()
}

async fn delete_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.set_faults(Faults::default());
    tracing::info!("mos-sim faults cleared");
    axum::Json(shared.faults()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    key: String,
}

async fn put_key(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<KeyBody>(&body) {
        Ok(KeyBody { key }) if !key.is_empty() => {
            shared.set_key(&key);
            // Never log or echo the key itself.
            tracing::info!("mos-sim key changed");
            message(StatusCode::OK, "Key updated")
        }
        Ok(_) => message(StatusCode::BAD_REQUEST, "'key' must not be empty"),
        Err(e) => message(StatusCode::BAD_REQUEST, &format!("Invalid key body: {e}")),
    }
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset();
    tracing::info!("mos-sim reset");
    message(StatusCode::OK, "Reset")
}

async fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#)
}
