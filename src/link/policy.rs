//! Link policy in one place (as Vector's sinks keep theirs in one retry-logic
//! type): what an answer of the endpoint means, whether a failed call is
//! tried again in process, and what becomes of a message whose call failed.
//! *How long* to wait between tries (the backoff) is the single flight's.

use std::time::Duration;

use crate::domain::{DeadLetterReason, Outcome, RetryLadder};

/// The one reading of a failed call, used by every caller: the handler, the
/// in-process retries, the circuit and its probe, and `check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Connect error, timeout, 408, 429, 5xx (and unexpected 1xx/3xx): try
    /// again later, after the endpoint's `Retry-After` when it gave one.
    RetryAfter(Option<Duration>),
    /// Any other 4xx: this request will never succeed.
    Reject,
    /// 401/403: the key is refused; no message is at fault.
    KeyRefused,
    /// 429, or 503 with `Retry-After`: the endpoint asks every caller to
    /// slow down. Not a failure of this message: the whole process pauses
    /// for the time given (`flow.rs`) and the call is made again, spending
    /// no retry and not counting towards the circuit.
    RateLimited(Duration),
}

/// Why a call did not succeed, already classified into its [`Verdict`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub verdict: Verdict,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// For logs and `x-linker-error`; never holds the key.
    pub message: String,
}

impl CallError {
    /// No answer came (connect error, timeout, cut connection).
    pub(super) fn no_answer(message: String) -> Self {
        Self {
            verdict: Verdict::RetryAfter(None),
            status: None,
            message,
        }
    }

    /// The status, or what kept an answer from coming: never the body, for
    /// places that must not carry what an endpoint echoes (`/readyz`).
    pub fn summary(&self) -> String {
        match self.status {
            Some(code) => format!("HTTP {code} from the link endpoint"),
            None => self.message.clone(),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self.verdict {
            Verdict::RetryAfter(after) => after,
            Verdict::RateLimited(after) => Some(after),
            _ => None,
        }
    }
}

/// What one answer says about the target, for the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHealth {
    /// It answered and accepted the key: a 2xx, or a rejection of this one request.
    Up,
    /// No answer, or one saying "not now".
    Unavailable,
    KeyRefused,
}

impl TargetHealth {
    pub fn of<T>(answer: &Result<T, CallError>) -> Self {
        match answer {
            Ok(_) => TargetHealth::Up,
            Err(error) => match error.verdict {
                Verdict::RetryAfter(_) => TargetHealth::Unavailable,
                // It answered: busy is not down.
                Verdict::Reject | Verdict::RateLimited(_) => TargetHealth::Up,
                Verdict::KeyRefused => TargetHealth::KeyRefused,
            },
        }
    }
}

/// A 401/403 for one request, read against a check without a visitor made
/// after it (`probe.rs`): the key is refused only if the check is refused
/// too. Else the refusal is about this request (a WAF rule matching an
/// identifier, a workflow refusing one user): it is rejected, and must not
/// pause every other visitor. `rotated`: the key changed since the request
/// was sent, so the check (with the new key) says nothing about the key the
/// request carried; it is tried again, never rejected.
pub fn refusal_given(
    refused: CallError,
    check: &Result<u16, CallError>,
    rotated: bool,
) -> CallError {
    match TargetHealth::of(check) {
        TargetHealth::Up if rotated => CallError {
            verdict: Verdict::RetryAfter(None),
            message: format!(
                "{} (sent with the previous key; the key file has changed since, so it is tried again)",
                refused.message
            ),
            ..refused
        },
        TargetHealth::KeyRefused => refused,
        TargetHealth::Up => CallError {
            verdict: Verdict::Reject,
            message: format!(
                "{} (refused for this request only: a request without identifiers was accepted with the same key)",
                refused.message
            ),
            ..refused
        },
        // Neither proven: treat it as any failed call, so the ladder bounds it.
        TargetHealth::Unavailable => CallError {
            verdict: Verdict::RetryAfter(None),
            ..refused
        },
    }
}

/// Whether the single flight tries again in process. Once the circuit is
/// open, no more tries are spent: the message is handed back.
pub fn retry_in_process(error: &CallError, circuit_open: bool) -> bool {
    matches!(error.verdict, Verdict::RetryAfter(_)) && !circuit_open
}

/// The outcome of a message whose call failed after its in-process retries,
/// having had `attempts` delayed attempts so far.
pub fn after_failure(
    error: CallError,
    circuit_open: bool,
    ladder: &RetryLadder,
    attempts: u32,
) -> Outcome {
    let CallError {
        verdict, message, ..
    } = error;
    match verdict {
        Verdict::Reject => Outcome::DeadLetter {
            reason: DeadLetterReason::Rejected,
            error: message,
        },
        Verdict::KeyRefused => Outcome::HandBack { error: message },
        // An outage must not burn the message's retry ladder.
        Verdict::RetryAfter(_) | Verdict::RateLimited(_) if circuit_open => {
            Outcome::HandBack { error: message }
        }
        // Rate limited for longer than the single flight waits (`flow::PATIENCE`).
        Verdict::RetryAfter(_) | Verdict::RateLimited(_) => match ladder.next(attempts) {
            Some(step) => Outcome::Retry {
                error: message,
                step,
            },
            None => Outcome::DeadLetter {
                reason: DeadLetterReason::RetriesExhausted,
                error: message,
            },
        },
    }
}

/// A hand-back costs no retry step, so it needs a bound of its own: a
/// message handed back `max` times already is dead-lettered instead, and no
/// message can hold its queue however often the circuit opens.
pub fn cap_hand_backs(outcome: Outcome, hand_backs: u32, max: u32) -> Outcome {
    match outcome {
        Outcome::HandBack { error } if hand_backs >= max => Outcome::DeadLetter {
            reason: DeadLetterReason::HandBacksExhausted,
            error: format!(
                "handed back {hand_backs} times (LINKER_MAX_HAND_BACKS) while the circuit was open; last: {error}"
            ),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(verdict: Verdict) -> CallError {
        CallError {
            verdict,
            status: None,
            message: "boom".into(),
        }
    }

    #[test]
    fn a_refusal_blames_the_key_only_when_the_check_is_refused_too() {
        let refused = || CallError {
            verdict: Verdict::KeyRefused,
            status: Some(403),
            message: "HTTP 403 from the link endpoint: blocked".into(),
        };
        let check_refused: Result<u16, CallError> = Err(refused());
        assert_eq!(refusal_given(refused(), &check_refused, false), refused());
        let accepted = refusal_given(refused(), &Ok(400), false);
        assert_eq!(accepted.verdict, Verdict::Reject);
        assert_eq!(accepted.status, Some(403));
        assert!(accepted.message.starts_with("HTTP 403"));
        let down: Result<u16, CallError> = Err(error(Verdict::RetryAfter(None)));
        assert_eq!(
            refusal_given(refused(), &down, false).verdict,
            Verdict::RetryAfter(None)
        );
    }

    #[test]
    fn a_refusal_with_a_key_rotated_since_is_tried_again_not_rejected() {
        let refused = || CallError {
            verdict: Verdict::KeyRefused,
            status: Some(401),
            message: "HTTP 401 from the link endpoint".into(),
        };
        // The check, with the new key, is accepted: the old key was refused.
        let retried = refusal_given(refused(), &Ok(400), true);
        assert_eq!(retried.verdict, Verdict::RetryAfter(None));
        assert!(retry_in_process(&retried, false));
        let ladder = RetryLadder::new(vec![Duration::from_secs(1)]);
        assert!(matches!(
            after_failure(retried, false, &ladder, 0),
            Outcome::Retry { .. }
        ));
        // Refused with the new key too: the key is refused, as without a rotation.
        let still: Result<u16, CallError> = Err(refused());
        assert_eq!(refusal_given(refused(), &still, true), refused());
    }

    #[test]
    fn hand_backs_are_capped() {
        let hand_back = || Outcome::HandBack {
            error: "circuit open".into(),
        };
        assert_eq!(cap_hand_backs(hand_back(), 9, 10), hand_back());
        assert!(matches!(
            cap_hand_backs(hand_back(), 10, 10),
            Outcome::DeadLetter { reason: DeadLetterReason::HandBacksExhausted, error }
                if error.contains("10 times") && error.contains("circuit open")
        ));
        let linked = Outcome::Linked(crate::domain::LinkResult::Linked);
        assert_eq!(cap_hand_backs(linked.clone(), 99, 10), linked);
    }

    #[test]
    fn a_rejection_still_shows_the_target_up() {
        let answer: Result<(), CallError> = Err(error(Verdict::Reject));
        assert_eq!(TargetHealth::of(&answer), TargetHealth::Up);
        let answer: Result<(), CallError> = Err(error(Verdict::RetryAfter(None)));
        assert_eq!(TargetHealth::of(&answer), TargetHealth::Unavailable);
        let answer: Result<(), CallError> = Err(error(Verdict::KeyRefused));
        assert_eq!(TargetHealth::of(&answer), TargetHealth::KeyRefused);
        assert_eq!(TargetHealth::of(&Ok::<(), CallError>(())), TargetHealth::Up);
    }

    #[test]
    fn only_transient_failures_are_retried_and_not_while_open() {
        assert!(retry_in_process(&error(Verdict::RetryAfter(None)), false));
        assert!(!retry_in_process(&error(Verdict::RetryAfter(None)), true));
        assert!(!retry_in_process(&error(Verdict::Reject), false));
        assert!(!retry_in_process(&error(Verdict::KeyRefused), false));
    }

    #[test]
    fn the_ladder_decides_between_retry_and_exhausted() {
        let ladder = RetryLadder::new(vec![Duration::from_secs(1), Duration::from_secs(2)]);
        let transient = || error(Verdict::RetryAfter(Some(Duration::from_secs(1))));
        assert!(matches!(
            after_failure(transient(), false, &ladder, 1),
            Outcome::Retry { step, .. } if step.attempt == 2 && step.delay == Duration::from_secs(2)
        ));
        assert!(matches!(
            after_failure(transient(), false, &ladder, 2),
            Outcome::DeadLetter {
                reason: DeadLetterReason::RetriesExhausted,
                ..
            }
        ));
        assert!(matches!(
            after_failure(transient(), true, &ladder, 0),
            Outcome::HandBack { .. }
        ));
        assert!(matches!(
            after_failure(error(Verdict::Reject), false, &ladder, 0),
            Outcome::DeadLetter {
                reason: DeadLetterReason::Rejected,
                ..
            }
        ));
        assert!(matches!(
            after_failure(error(Verdict::KeyRefused), false, &ladder, 0),
            Outcome::HandBack { .. }
        ));
    }
}
