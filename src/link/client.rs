//! The HTTP client for the Link Identities endpoint, and the classification
//! of every answer into success / transient / permanent / auth.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};

use super::key::{CurrentKey, Keyed, Reload};
use super::policy::{CallError, Verdict};
use crate::config::LinkConfig;
use crate::domain::{LinkEvent, LinkResult};
use crate::ops::metrics::Metrics;

/// Longest piece of a response body kept in an error message.
const MAX_BODY_IN_ERROR: usize = 300;
/// A Retry-After is honoured up to 60 s.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The pause after a 429 that says not for how long.
pub const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LinkRequestBody<'a> {
    anonymous_identifier: &'a str,
    user_identifier: &'a str,
}

#[derive(Deserialize)]
struct LinkResponseBody {
    #[serde(default)]
    outcome: Option<String>,
}

/// One client for the life of the process: connection pool, TLS (rustls)
/// and timeout are set up once.
#[derive(Clone)]
pub struct LinkClient {
    http: reqwest::Client,
    url: reqwest::Url,
    key: Arc<CurrentKey>,
    metrics: Arc<Metrics>,
}

impl LinkClient {
    pub fn new(config: &LinkConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(config.concurrency.get())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A redirected POST would silently change what we call.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("identity-link-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let key = Arc::new(CurrentKey::new(config.secret_key.clone(), metrics.clone())?);
        Ok(Self {
            http,
            url: config.endpoint_url.clone(),
            key,
            metrics,
        })
    }

    /// Reads the key file again (on a refusal, before a probe; never per call).
    pub fn reload_key(&self) -> Reload {
        self.key.reload()
    }

    /// Which key calls use now: compared with the one a refused call was
    /// sent with.
    pub fn key_generation(&self) -> u64 {
        self.key.get().generation
    }

    /// `LINKER_MOS_SECRET_KEY` or `LINKER_MOS_SECRET_KEY_FILE`.
    pub fn key_variable(&self) -> &'static str {
        self.key.variable()
    }

    /// One POST, no retries. `request_id` goes to `x-request-id`.
    pub async fn link(&self, event: &LinkEvent, request_id: &str) -> Result<LinkResult, CallError> {
        let body = LinkRequestBody {
            anonymous_identifier: event.anonymous.as_str(),
            user_identifier: event.user.as_str(),
        };
        let key = self.key.get();
        let started = Instant::now();
        let sent = self
            .http
            .post(self.url.clone())
            .header("x-mos-key", key.header.clone())
            .header("x-request-id", request_id_header(request_id))
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                self.metrics.count_api_request(None, started.elapsed());
                return Err(CallError::no_answer(scrub(
                    &describe_transport_error(&error),
                    &key,
                )));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let bytes = response.bytes().await;
        self.metrics
            .count_api_request(Some(status.as_u16()), started.elapsed());
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) if status.is_success() => {
                // The endpoint answered 2xx; the link exists even if the body was cut.
                tracing::debug!(%error, "link call answered 2xx but the body could not be read");
                return Ok(LinkResult::Linked);
            }
            Err(error) => {
                return Err(CallError {
                    verdict: Verdict::RetryAfter(retry_after),
                    status: Some(status.as_u16()),
                    message: scrub(&format!("HTTP {status}, body unreadable: {error}"), &key),
                });
            }
        };
        classify(status, retry_after, is_json, &bytes, key.secret.expose())
    }

    /// `check-config`: POSTs `{}`. The workflow answers 400 for missing
    /// fields once the key is accepted, so 400 (or 2xx) means reachable and
    /// authorised, and no link can be created.
    pub async fn check_reachable(&self) -> Result<u16, CallError> {
        let key = self.key.get();
        let started = Instant::now();
        let sent = self
            .http
            .post(self.url.clone())
            .header("x-mos-key", key.header.clone())
            .header(
                "x-request-id",
                format!("check-config-{}", uuid::Uuid::new_v4()),
            )
            .json(&serde_json::json!({}))
            .send()
            .await;
        let response = sent.map_err(|error| {
            self.metrics.count_api_request(None, started.elapsed());
            CallError::no_answer(scrub(&describe_transport_error(&error), &key))
        })?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        self.metrics
            .count_api_request(Some(status.as_u16()), started.elapsed());
        if status == StatusCode::BAD_REQUEST || status.is_success() {
            return Ok(status.as_u16());
        }
        match classify(status, None, false, &body, key.secret.expose()) {
            Ok(_) => Ok(status.as_u16()),
            Err(error) => Err(error),
        }
    }
}

/// A hostile or broken endpoint could echo the key back; never pass it on.
fn scrub(text: &str, key: &Keyed) -> String {
    text.replace(key.secret.expose(), "[redacted]")
}

/// The event id comes from the producer (`message_id` or the body) and may
/// hold characters a header cannot carry (control characters). Such an id
/// must not fail the call: reqwest would report a builder error, which looks
/// transient, so the message would burn its retry ladder and could even open
/// the circuit. Those characters are replaced instead.
fn request_id_header(request_id: &str) -> HeaderValue {
    HeaderValue::from_str(request_id).unwrap_or_else(|_| {
        let cleaned: String = request_id
            .chars()
            .map(|c| if c.is_control() { '_' } else { c })
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or(HeaderValue::from_static("invalid-event-id"))
    })
}

fn describe_transport_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed without a response"
    };
    // Walk the source chain: reqwest's own Display is terse ("error sending request").
    let mut detail = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(s) = source {
        if !detail.is_empty() {
            detail.push_str(": ");
        }
        detail.push_str(&s.to_string());
        source = s.source();
    }
    format!("link call {kind}: {detail}")
}

/// Maps a response to the outcome of the call.
/// `secret` is taken out of the excerpt an error keeps of the body.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    is_json: bool,
    body: &[u8],
    secret: &str,
) -> Result<LinkResult, CallError> {
    let code = status.as_u16();
    if status.is_success() {
        let outcome = if is_json || body.first() == Some(&b'{') {
            serde_json::from_slice::<LinkResponseBody>(body)
                .ok()
                .and_then(|b| b.outcome)
        } else {
            None
        };
        return Ok(match outcome.as_deref() {
            Some("already_linked") => LinkResult::AlreadyLinked,
            // `created`, or the recipe's plain {"message":"Success"}.
            _ => LinkResult::Linked,
        });
    }
    let verdict = match (code, retry_after) {
        (401 | 403, _) => Verdict::KeyRefused,
        (429, after) => Verdict::RateLimited(after.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE)),
        (503, Some(after)) => Verdict::RateLimited(after),
        (408 | 500..=599, after) => Verdict::RetryAfter(after),
        (400..=499, _) => Verdict::Reject,
        // 1xx/3xx: a proxy or a wrong URL; not the message's fault, so retry.
        (_, after) => Verdict::RetryAfter(after),
    };
    Err(CallError {
        verdict,
        status: Some(code),
        message: format!(
            "HTTP {code} from the link endpoint: {}",
            body_excerpt(body, secret)
        ),
    })
}

/// Scrubbed whole before it is cut: a key echoed across the cut would
/// otherwise leave its first part in the excerpt. Only error answers pay for it.
fn body_excerpt(body: &[u8], secret: &str) -> String {
    let text = String::from_utf8_lossy(body);
    let text = if secret.is_empty() {
        text
    } else {
        std::borrow::Cow::Owned(text.replace(secret, "[redacted]"))
    };
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    match text.char_indices().nth(MAX_BODY_IN_ERROR) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".to_owned(),
        None => text,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, capped at 60 s.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_bodies() {
        let ok = |body: &str| classify(StatusCode::OK, None, true, body.as_bytes(), "k");
        assert_eq!(
            ok(r#"{"message":"Success","outcome":"created"}"#),
            Ok(LinkResult::Linked)
        );
        assert_eq!(
            ok(r#"{"message":"Success","outcome":"already_linked"}"#),
            Ok(LinkResult::AlreadyLinked)
        );
        assert_eq!(ok(r#"{"message":"Success"}"#), Ok(LinkResult::Linked));
        assert_eq!(ok("not json"), Ok(LinkResult::Linked));
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None, false, b"", "k"),
            Ok(LinkResult::Linked)
        );
    }

    #[test]
    fn failures_are_classified() {
        let err = |code: u16| {
            classify(StatusCode::from_u16(code).unwrap(), None, true, b"{}", "k").unwrap_err()
        };
        for code in [408, 500, 502, 503, 504, 302] {
            assert_eq!(err(code).verdict, Verdict::RetryAfter(None), "{code}");
        }
        // A rate limit is its own verdict; a 503 only when it says how long.
        assert_eq!(
            err(429).verdict,
            Verdict::RateLimited(DEFAULT_RATE_LIMIT_PAUSE)
        );
        let later = Some(Duration::from_secs(3));
        for code in [429, 503] {
            let error =
                classify(StatusCode::from_u16(code).unwrap(), later, true, b"{}", "k").unwrap_err();
            assert_eq!(error.verdict, Verdict::RateLimited(Duration::from_secs(3)));
        }
        for code in [400, 404, 409, 422] {
            assert_eq!(err(code).verdict, Verdict::Reject, "{code}");
        }
        for code in [401, 403] {
            assert_eq!(err(code).verdict, Verdict::KeyRefused, "{code}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("3600", now), Some(MAX_RETRY_AFTER));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn any_event_id_makes_a_valid_request_id() {
        assert_eq!(request_id_header("evt-1"), "evt-1");
        assert_eq!(request_id_header("line\nbreak\u{0}"), "line_break_");
        assert_eq!(request_id_header("ctl\u{7f}id"), "ctl_id");
        assert_eq!(
            request_id_header("évènement").as_bytes(),
            "évènement".as_bytes()
        );
    }

    #[test]
    fn a_key_echoed_across_the_cut_leaves_nothing_of_itself() {
        let key = "sk_live_0123456789abcdefghijklmnopqrstuvwxyz";
        // The key starts 10 characters before the excerpt's end.
        let body = format!("{}{key} and more", "x".repeat(MAX_BODY_IN_ERROR - 10));
        let err = classify(StatusCode::BAD_REQUEST, None, false, body.as_bytes(), key).unwrap_err();
        assert!(!err.message.contains(&key[..10]), "{}", err.message);
        assert!(err.message.contains("[redacted]"));
        assert_eq!(body_excerpt(b"ab", key), "ab");
        assert_eq!(body_excerpt(b"kkk", "kk"), "[redacted]k");
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(10_000);
        let err = classify(StatusCode::BAD_REQUEST, None, false, body.as_bytes(), "k").unwrap_err();
        assert!(err.to_string().len() < 400);
    }
}
