//! RabbitMQ adapter for qt (lapin).
