//! The wall clock in Kafka's unit: milliseconds since the Unix epoch. Only
//! leaders and request handlers read it; what they read is stamped into
//! commands, so replicas never consult their own clocks when applying.

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
