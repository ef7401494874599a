-- The raw archive, resume and the spend cap: the ledger says which answers
-- were reused from the archive (paid by an earlier run) instead of fetched.

ALTER TABLE requests ADD COLUMN replayed boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN requests.replayed IS
    'True when the answer came from the raw archive (paid by an earlier run of the same snapshot date); its cost is then 0.';

ALTER TABLE runs ADD COLUMN replayed bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN replayed_cost_usd double precision NOT NULL DEFAULT 0;
COMMENT ON COLUMN runs.replayed IS
    'Answers the run reused from the raw archive instead of asking the API.';
COMMENT ON COLUMN runs.replayed_cost_usd IS
    'What the reused answers cost when an earlier run fetched them (not charged again).';
COMMENT ON COLUMN runs.status IS
    'running, succeeded, partial, failed, interrupted, account_error or budget_exhausted.';
