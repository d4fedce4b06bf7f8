//! Per-device metrics: each device keeps its counters as atomics in a `Serialize` struct and
//! hands the VMM an `Arc` of it as a [`MetricsSource`].

/// Something that can report its counters as JSON.
pub trait MetricsSource: Send + Sync {
    /// A snapshot of the counters.
    fn snapshot(&self) -> serde_json::Value;
}

impl<T: serde::Serialize + Send + Sync> MetricsSource for T {
    fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
