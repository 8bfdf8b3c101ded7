//! Domain: what an auth event means for linking, with no I/O.
//!
//! Raw bytes become a [`LinkEvent`] (or a [`Rejection`]) exactly once; after
//! that only the parsed [`AnonymousId`] / [`UserId`] travel, so invalid input
//! cannot reach the network.

mod event;
mod identifiers;
mod outcome;
mod partition;
mod retry;

pub use event::{EventMeta, LinkEvent, ParsedEvent, Rejection, parse_event};
pub use identifiers::{
    AnonymousId, Blocklist, IdentifierError, JsonPointers, MAX_IDENTIFIER_BYTES, UserId,
};
pub use outcome::{DeadLetterReason, LinkResult, Outcome, OutcomeLabel, SkipReason};
pub use partition::partition_of;
pub use retry::{RetryLadder, RetryStep, delay_label};
