//! The one outcome every message ends in (contract section 2).

/// Why a message was skipped (acked without a call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    NoAnonymousIdentifier,
    BlockedIdentifier,
    SameIdentifier,
}

impl SkipReason {
    pub const ALL: [SkipReason; 3] = [
        SkipReason::NoAnonymousIdentifier,
        SkipReason::BlockedIdentifier,
        SkipReason::SameIdentifier,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoAnonymousIdentifier => "no_anonymous_identifier",
            SkipReason::BlockedIdentifier => "blocked_identifier",
            SkipReason::SameIdentifier => "same_identifier",
        }
    }
}

/// Why a message went to the dead-letter queue (`x-linker-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    Malformed,
    MissingUserIdentifier,
    InvalidIdentifier,
    Rejected,
    RetriesExhausted,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 5] = [
        DeadLetterReason::Malformed,
        DeadLetterReason::MissingUserIdentifier,
        DeadLetterReason::InvalidIdentifier,
        DeadLetterReason::Rejected,
        DeadLetterReason::RetriesExhausted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Malformed => "malformed",
            DeadLetterReason::MissingUserIdentifier => "missing_user_identifier",
            DeadLetterReason::InvalidIdentifier => "invalid_identifier",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What the link call reported on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkResult {
    /// `outcome: created`, or a plain `{"message":"Success"}`.
    Linked,
    /// `outcome: already_linked`, a linked-cache hit, or a shared in-flight result.
    AlreadyLinked,
}

/// The decision for one message; the consumer loop turns it into acks and
/// confirmed publishes, the handler never touches the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linked(LinkResult),
    Skipped(SkipReason),
    /// Transient failure after the immediate retries: next step of the delay ladder.
    Retry {
        error: String,
    },
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
    /// The circuit is open (key refused, or the target is down): the message
    /// goes back to the work queue untouched, costing no retry step.
    HandBack {
        error: String,
    },
}

impl Outcome {
    /// Label for `identity_linker_messages_total{outcome}`; `None` for a
    /// hand-back, which is not an outcome (the message will come again).
    pub fn metric_label(&self) -> Option<&'static str> {
        match self {
            Outcome::Linked(LinkResult::Linked) => Some("linked"),
            Outcome::Linked(LinkResult::AlreadyLinked) => Some("already_linked"),
            Outcome::Skipped(_) => Some("skipped"),
            Outcome::Retry { .. } => Some("retried"),
            Outcome::DeadLetter { .. } => Some("dead_lettered"),
            Outcome::HandBack { .. } => None,
        }
    }
}
