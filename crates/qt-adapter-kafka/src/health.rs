//! Whether the client can reach the cluster, from librdkafka's error events and statistics.
//!
//! librdkafka reconnects on its own, so "unhealthy" is a state it reports, not one the
//! adapter acts on: an `AllBrokersDown` (or fatal) error marks the client unhealthy, and the
//! next statistics report that shows a broker connection `UP` marks it healthy again.

use parking_lot::Mutex;
use qt_core::Health;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::statistics::Statistics;

#[derive(Debug, Default)]
struct State {
    /// Set once the client was started (the consumer subscribed, the producer created).
    started: bool,
    /// Why no broker is reachable, while that is so.
    down: Option<String>,
    /// A fatal error: the client cannot be used any more.
    fatal: Option<String>,
    closed: bool,
    /// The latest error librdkafka reported, for error messages.
    last_error: Option<String>,
    /// The latest authentication failure, which explains the errors that follow it.
    auth_error: Option<String>,
}

/// Connection health of one librdkafka client.
#[derive(Debug, Default)]
pub struct BrokerHealth {
    state: Mutex<State>,
}

impl BrokerHealth {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn started(&self) {
        self.state.lock().started = true;
    }

    pub fn closed(&self) {
        self.state.lock().closed = true;
    }

    /// Data came back from a broker: whatever was down is up again. Keeps health right when
    /// statistics are slow or disabled.
    pub fn reachable(&self) {
        let mut st = self.state.lock();
        st.down = None;
        st.auth_error = None;
    }

    pub fn fatal(&self, reason: String) {
        self.state.lock().fatal = Some(reason);
    }

    /// Feeds a librdkafka error event (reason already redacted).
    pub fn on_error(&self, error: &str, code: Option<RDKafkaErrorCode>, reason: &str) {
        let mut st = self.state.lock();
        st.last_error = Some(format!("{reason} ({error})"));
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                st.down = Some(format!("all brokers are down: {reason}"));
            }
            Some(RDKafkaErrorCode::Authentication) => {
                st.down = Some(format!("authentication failed: {reason}"));
                st.auth_error = st.last_error.clone();
            }
            Some(RDKafkaErrorCode::Fatal) => st.fatal = Some(format!("fatal client error: {reason}")),
            _ => {}
        }
    }

    /// Feeds a statistics report: any broker connection in state `UP` means the cluster is
    /// reachable; none means it is not.
    pub fn on_stats(&self, stats: &Statistics) {
        // librdkafka lists an internal pseudo-broker beside the real ones.
        let brokers: Vec<_> = stats.brokers.values().filter(|b| b.source != "internal").collect();
        if brokers.is_empty() {
            return;
        }
        let up = brokers.iter().any(|b| b.state == "UP");
        let mut st = self.state.lock();
        if up {
            st.down = None;
            st.auth_error = None;
        } else if st.down.is_none() {
            let mut states: Vec<String> = brokers.iter().map(|b| format!("{} {}", b.name, b.state)).collect();
            states.sort();
            st.down = Some(format!("no broker connection is up ({})", states.join(", ")));
        }
    }

    /// What most likely explains a failure (redacted): an authentication failure if one
    /// happened since the cluster was last reachable, else the latest error.
    pub fn last_error(&self) -> Option<String> {
        let st = self.state.lock();
        st.auth_error.clone().or_else(|| st.last_error.clone())
    }

    pub fn health(&self) -> Health {
        let st = self.state.lock();
        if let Some(fatal) = &st.fatal {
            return Health::Unhealthy(fatal.clone());
        }
        if st.closed {
            return Health::Unhealthy("closed".to_owned());
        }
        if !st.started {
            return Health::Unhealthy("not connected yet".to_owned());
        }
        match &st.down {
            Some(reason) => Health::Unhealthy(reason.clone()),
            None => Health::Healthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::statistics::Broker;

    fn stats(states: &[&str]) -> Statistics {
        let mut s = Statistics::default();
        for (i, state) in states.iter().enumerate() {
            let b = Broker {
                name: format!("b{i}:9092/{i}"),
                state: (*state).to_owned(),
                source: "learned".to_owned(),
                ..Broker::default()
            };
            s.brokers.insert(b.name.clone(), b);
        }
        s
    }

    #[test]
    fn down_until_a_broker_is_up_again() {
        let h = BrokerHealth::new();
        assert!(!h.health().is_ready(), "not started");
        h.started();
        assert_eq!(h.health(), Health::Healthy);
        h.on_error(
            "transport",
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "b0 refused",
        );
        assert_eq!(h.health(), Health::Healthy, "one failing connection is not an outage");
        h.on_error("down", Some(RDKafkaErrorCode::AllBrokersDown), "2/2 brokers are down");
        assert!(matches!(h.health(), Health::Unhealthy(r) if r.contains("2/2 brokers are down")));
        h.on_stats(&stats(&["DOWN", "CONNECT"]));
        assert!(!h.health().is_ready());
        h.on_stats(&stats(&["DOWN", "UP"]));
        assert_eq!(h.health(), Health::Healthy);
        h.on_stats(&stats(&["DOWN", "DOWN"]));
        assert!(matches!(h.health(), Health::Unhealthy(r) if r.contains("no broker connection is up")));
        h.reachable();
        assert_eq!(h.health(), Health::Healthy);
        h.closed();
        assert!(!h.health().is_ready());
    }

    #[test]
    fn an_authentication_failure_explains_later_errors() {
        let h = BrokerHealth::new();
        h.started();
        h.on_error("auth", Some(RDKafkaErrorCode::Authentication), "SASL handshake failed");
        h.on_error("down", Some(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
        assert!(h.last_error().unwrap().contains("SASL handshake failed"));
        h.on_stats(&stats(&["UP"]));
        assert!(h.last_error().unwrap().contains("brokers are down"));
    }
}
