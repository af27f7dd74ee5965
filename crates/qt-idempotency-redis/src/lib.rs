//! Redis idempotency store for qt (redis + deadpool-redis).
