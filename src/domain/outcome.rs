//! The one outcome every message ends in (docs/interface.md, "Outcomes").

use super::retry::RetryStep;

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
    /// Over `LINKER_MAX_BODY_BYTES`: dead-lettered without being parsed.
    BodyTooLarge,
    /// Handed back `LINKER_MAX_HAND_BACKS` times: no message may hold its queue.
    HandBacksExhausted,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 7] = [
        DeadLetterReason::Malformed,
        DeadLetterReason::MissingUserIdentifier,
        DeadLetterReason::InvalidIdentifier,
        DeadLetterReason::Rejected,
        DeadLetterReason::RetriesExhausted,
        DeadLetterReason::BodyTooLarge,
        DeadLetterReason::HandBacksExhausted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Malformed => "malformed",
            DeadLetterReason::MissingUserIdentifier => "missing_user_identifier",
            DeadLetterReason::InvalidIdentifier => "invalid_identifier",
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
            DeadLetterReason::BodyTooLarge => "body_too_large",
            DeadLetterReason::HandBacksExhausted => "hand_backs_exhausted",
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

/// The decision for one message; the consumer turns it into a settlement
/// (an ack, or a confirmed copy and then an ack), the handler never touches
/// the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linked(LinkResult),
    Skipped(SkipReason),
    /// Transient failure after the immediate retries: the next step of the delay ladder.
    Retry {
        error: String,
        step: RetryStep,
    },
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
    /// The circuit is open (key refused, or the target is down): the message
    /// goes back to the queue it came from untouched, costing no retry step.
    HandBack {
        error: String,
    },
    /// The routing step: the event needs a call, made by the one active
    /// consumer of its visitor's partition.
    Route {
        partition: u16,
    },
}

/// The values of `identity_linker_messages_total{outcome}`: the one list,
/// typed, that logs, metrics and tests share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeLabel {
    Linked,
    AlreadyLinked,
    Skipped,
    Retried,
    DeadLettered,
}

impl OutcomeLabel {
    pub const ALL: [OutcomeLabel; 5] = [
        OutcomeLabel::Linked,
        OutcomeLabel::AlreadyLinked,
        OutcomeLabel::Skipped,
        OutcomeLabel::Retried,
        OutcomeLabel::DeadLettered,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeLabel::Linked => "linked",
            OutcomeLabel::AlreadyLinked => "already_linked",
            OutcomeLabel::Skipped => "skipped",
            OutcomeLabel::Retried => "retried",
            OutcomeLabel::DeadLettered => "dead_lettered",
        }
    }
    /// Position in [`OutcomeLabel::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Outcome {
    /// Its label in `identity_linker_messages_total`; `None` for a hand-back
    /// or a routing step, which are not outcomes (the message comes again).
    pub fn label(&self) -> Option<OutcomeLabel> {
        match self {
            Outcome::Linked(LinkResult::Linked) => Some(OutcomeLabel::Linked),
            Outcome::Linked(LinkResult::AlreadyLinked) => Some(OutcomeLabel::AlreadyLinked),
            Outcome::Skipped(_) => Some(OutcomeLabel::Skipped),
            Outcome::Retry { .. } => Some(OutcomeLabel::Retried),
            Outcome::DeadLetter { .. } => Some(OutcomeLabel::DeadLettered),
            Outcome::HandBack { .. } | Outcome::Route { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_indexed_in_list_order() {
        for (position, label) in OutcomeLabel::ALL.into_iter().enumerate() {
            assert_eq!(label.index(), position, "{}", label.as_str());
        }
    }
}
