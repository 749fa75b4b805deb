-- Health reported by bubble-servers: a bounded time series per bubble (7 days, pruned on insert).
CREATE TABLE health_samples (
    bubble_id TEXT NOT NULL REFERENCES bubbles (id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    online_members BIGINT NOT NULL,
    sessions BIGINT NOT NULL,
    connections BIGINT NOT NULL,
    envelopes_relayed BIGINT NOT NULL,
    envelopes_refused BIGINT NOT NULL,
    auth_failures BIGINT NOT NULL,
    turn_allocations BIGINT NOT NULL
);

CREATE INDEX health_samples_bubble_at ON health_samples (bubble_id, at);
