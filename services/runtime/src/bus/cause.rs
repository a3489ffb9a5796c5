//! What a failed NATS call most likely means, for the one log line it gets. async-nats reports a
//! JetStream without a leader (an election, a quorum loss) in the words of whichever call hit it —
//! "no stream found", "no responders", "timed out", "consumer not found" — so an operator reading
//! the log needs the cause named next to the client's text.

use std::fmt;

/// The likely cause of a NATS failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nobody answered for the stream, bucket or consumer: no leader (an election, a quorum loss)
    /// or it does not exist.
    NoLeader,
    /// JetStream did not answer in time (an election in progress, an overloaded server).
    Timeout,
    /// The client lost its connection.
    Disconnected,
    /// A pull consumer's heartbeats stopped (its server changed or is unreachable).
    MissedHeartbeat,
    /// The server has no room (`insufficient storage resources`).
    NoResources,
    /// Anything else: the client's text says it.
    Other,
}

impl Cause {
    /// Classifies an error by its text (async-nats error kinds differ for every call).
    pub fn of(error: &(impl fmt::Display + ?Sized)) -> Self {
        let text = error.to_string().to_ascii_lowercase();
        let has = |needle: &str| text.contains(needle);
        if has("no responders")
            || has("does not exist")
            || has("stream not found")
            || has("no stream")
            || has("consumer not found")
            || has("consumer deleted")
            || has("jetstream not enabled")
            || has("leader")
        {
            Self::NoLeader
        } else if has("heartbeat") {
            Self::MissedHeartbeat
        } else if has("timed out") || has("timeout") {
            Self::Timeout
        } else if has("insufficient") {
            Self::NoResources
        } else if has("broken pipe")
            || has("disconnected")
            || has("connection reset")
            || has("connection closed")
        {
            Self::Disconnected
        } else {
            Self::Other
        }
    }

    /// Whether waiting can fix it (everything but an unclassified failure and a full server).
    pub fn is_passing(self) -> bool {
        !matches!(self, Self::Other | Self::NoResources)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoLeader => {
                "JetStream unavailable: no leader answered (a leader election or a quorum loss)"
            }
            Self::Timeout => "timeout: JetStream did not answer in time",
            Self::Disconnected => "connection to NATS lost",
            Self::MissedHeartbeat => {
                "missed heartbeats: the consumer's server changed or is unreachable"
            }
            Self::NoResources => "the NATS server is out of storage resources",
            Self::Other => "NATS error",
        })
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::RequestErrorKind;
    use async_nats::jetstream::kv::EntryErrorKind;

    use super::*;

    #[test]
    fn the_clients_own_errors_are_named_by_their_cause() {
        let timed_out = async_nats::error::Error::<EntryErrorKind>::new(EntryErrorKind::TimedOut);
        assert_eq!(Cause::of(&timed_out), Cause::Timeout, "{timed_out}");
        let no_responders =
            async_nats::error::Error::<RequestErrorKind>::new(RequestErrorKind::NoResponders);
        assert_eq!(
            Cause::of(&no_responders),
            Cause::NoLeader,
            "{no_responders}"
        );
        // As the server words it in a JetStream API error (code 10014).
        assert_eq!(
            Cause::of("jetstream error: consumer not found (code 404, error code 10014)"),
            Cause::NoLeader
        );
        assert_eq!(
            Cause::of("insufficient storage resources available"),
            Cause::NoResources
        );
        assert_eq!(
            Cause::of("permissions violation for subscription"),
            Cause::Other
        );
        assert!(Cause::NoLeader.to_string().contains("leader election"));
    }
}
