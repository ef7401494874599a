-- Pacing from what the server says: the ledger keeps the per-minute limit
-- the API announced (X-RateLimit-Limit) in its last answer to each request.

ALTER TABLE requests ADD COLUMN announced_limit bigint;
COMMENT ON COLUMN requests.announced_limit IS
    'The per-minute limit the API announced (X-RateLimit-Limit) in its last answer to this request; NULL when it sent none.';

-- A run that died is marked crashed by the next run of its pipeline and day.
COMMENT ON COLUMN runs.status IS
    'running, succeeded, partial, failed, interrupted, account_error, budget_exhausted or crashed.';
