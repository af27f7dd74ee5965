//! Kafka adapter for qt (rdkafka).
