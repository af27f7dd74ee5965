-- The ledger table: one column per LedgerRecord field. {schema} and {table} are replaced
-- by the configured (validated, plain) identifiers before this runs.
CREATE TABLE "{schema}"."{table}" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    trace_id text NOT NULL,
    message_id text NOT NULL,
    queue text NOT NULL,
    adapter text NOT NULL,
    event_name text,
    tenant_id text,
    dedup_key text,
    target text,
    status text NOT NULL CHECK (status IN
        ('succeeded', 'duplicate', 'deferred', 'parse_failed', 'unrouted', 'rejected', 'failed')),
    settlement text NOT NULL CHECK (settlement IN ('ack', 'nack', 'requeue', 'dead_letter')),
    attempts bigint NOT NULL CHECK (attempts >= 0),
    duration_ms double precision NOT NULL,
    consume_latency_ms double precision,
    agent_run_id text,
    llm_calls bigint NOT NULL CHECK (llm_calls >= 0),
    agent_output jsonb,
    error text,
    error_class text CHECK (error_class IN ('retryable', 'rate_limited', 'timeout', 'permanent')),
    decision_reason text,
    decision_policies jsonb NOT NULL DEFAULT '[]',
    retries jsonb NOT NULL DEFAULT '[]',
    received_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL
);

CREATE INDEX "{table}_tenant_finished_idx" ON "{schema}"."{table}" (tenant_id, finished_at);
CREATE INDEX "{table}_status_finished_idx" ON "{schema}"."{table}" (status, finished_at);
CREATE INDEX "{table}_finished_idx" ON "{schema}"."{table}" (finished_at);
CREATE INDEX "{table}_message_id_idx" ON "{schema}"."{table}" (message_id);
CREATE INDEX "{table}_dedup_key_idx" ON "{schema}"."{table}" (dedup_key);
CREATE INDEX "{table}_trace_id_idx" ON "{schema}"."{table}" (trace_id);
