-- The tables of the backlinks pipeline. They mirror the Arrow schemas of
-- crates/model/src/schema.rs column for column (same names, same order); a
-- test of the Postgres sink holds the two together. Change a column only with
-- a new migration and a note in the README.

-- summary: one row per partition (pipeline, target, snapshot date).
CREATE TABLE summary (
    pipeline                        text             NOT NULL,
    target                          text             NOT NULL,
    snapshot_date                   date             NOT NULL,
    fetched_at                      timestamptz      NOT NULL,
    task_id                         text,
    cost                            double precision,
    first_seen                      timestamptz,
    lost_date                       timestamptz,
    rank                            bigint,
    backlinks                       bigint,
    backlinks_spam_score            bigint,
    crawled_pages                   bigint,
    internal_links_count            bigint,
    external_links_count            bigint,
    broken_backlinks                bigint,
    broken_pages                    bigint,
    referring_domains               bigint,
    referring_domains_nofollow      bigint,
    referring_main_domains          bigint,
    referring_main_domains_nofollow bigint,
    referring_ips                   bigint,
    referring_subnets               bigint,
    referring_pages                 bigint,
    referring_pages_nofollow        bigint,
    info_server                     text,
    info_cms                        text,
    info_platform_type              text[],
    info_ip_address                 text,
    info_country                    text,
    info_is_ip                      boolean,
    info_target_spam_score          bigint,
    extra                           jsonb,
    PRIMARY KEY (pipeline, target, snapshot_date)
);

COMMENT ON TABLE summary IS
    'One row per pipeline, target and snapshot date: the scalars of the DataForSEO backlinks summary of the target. A re-run of the same partition replaces its row.';
COMMENT ON COLUMN summary.pipeline IS 'Name of the pipeline that fetched the row.';
COMMENT ON COLUMN summary.target IS 'The target as sent to the API: a normalised domain (lowercase, punycode, no www.) or an absolute URL.';
COMMENT ON COLUMN summary.snapshot_date IS 'UTC date of the run (or the --as-of date of a backfill).';
COMMENT ON COLUMN summary.fetched_at IS 'When the API answered.';
COMMENT ON COLUMN summary.task_id IS 'DataForSEO task id of the request.';
COMMENT ON COLUMN summary.cost IS 'Cost of the task in USD.';
COMMENT ON COLUMN summary.first_seen IS 'When DataForSEO first saw a backlink to the target.';
COMMENT ON COLUMN summary.lost_date IS 'When the target lost its last backlink, if it did.';
COMMENT ON COLUMN summary.rank IS 'DataForSEO rank of the target (0 to 1000).';
COMMENT ON COLUMN summary.backlinks IS 'Number of live backlinks.';
COMMENT ON COLUMN summary.backlinks_spam_score IS 'Average spam score of the backlinks (0 to 100).';
COMMENT ON COLUMN summary.crawled_pages IS 'Pages of the target DataForSEO crawled.';
COMMENT ON COLUMN summary.internal_links_count IS 'Links from the target to itself.';
COMMENT ON COLUMN summary.external_links_count IS 'Links from the target to other sites.';
COMMENT ON COLUMN summary.broken_backlinks IS 'Backlinks pointing to broken pages of the target.';
COMMENT ON COLUMN summary.broken_pages IS 'Pages of the target answering with an error.';
COMMENT ON COLUMN summary.referring_domains IS 'Domains linking to the target.';
COMMENT ON COLUMN summary.referring_domains_nofollow IS 'Domains linking to the target with nofollow links only.';
COMMENT ON COLUMN summary.referring_main_domains IS 'Main (registrable) domains linking to the target.';
COMMENT ON COLUMN summary.referring_main_domains_nofollow IS 'Main domains linking to the target with nofollow links only.';
COMMENT ON COLUMN summary.referring_ips IS 'IP addresses linking to the target.';
COMMENT ON COLUMN summary.referring_subnets IS 'Subnets linking to the target.';
COMMENT ON COLUMN summary.referring_pages IS 'Pages linking to the target.';
COMMENT ON COLUMN summary.referring_pages_nofollow IS 'Pages linking to the target with nofollow links only.';
COMMENT ON COLUMN summary.info_server IS 'Web server software of the target (info.server).';
COMMENT ON COLUMN summary.info_cms IS 'CMS of the target (info.cms).';
COMMENT ON COLUMN summary.info_platform_type IS 'Platform types of the target (info.platform_type).';
COMMENT ON COLUMN summary.info_ip_address IS 'IP address of the target (info.ip_address).';
COMMENT ON COLUMN summary.info_country IS 'Country of the target''s server (info.country).';
COMMENT ON COLUMN summary.info_is_ip IS 'Whether the target is an IP address (info.is_ip).';
COMMENT ON COLUMN summary.info_target_spam_score IS 'Spam score of the target itself (info.target_spam_score, 0 to 100).';
COMMENT ON COLUMN summary.extra IS 'Fields the API sent that the schema does not know, as a JSON object (those of info under "info"); NULL when there were none.';

-- summary_breakdown: the six link-count maps of a summary as long rows.
CREATE TABLE summary_breakdown (
    pipeline      text        NOT NULL,
    target        text        NOT NULL,
    snapshot_date date        NOT NULL,
    fetched_at    timestamptz NOT NULL,
    dimension     text        NOT NULL,
    key           text        NOT NULL,
    links         bigint,
    PRIMARY KEY (pipeline, target, snapshot_date, dimension, key)
);

COMMENT ON TABLE summary_breakdown IS
    'The link-count maps of a summary (referring links by TLD, type, attribute, platform type, semantic location and country) as one row per map entry. Replaced per pipeline, target and snapshot date together with summary.';
COMMENT ON COLUMN summary_breakdown.pipeline IS 'Name of the pipeline that fetched the row.';
COMMENT ON COLUMN summary_breakdown.target IS 'The target as sent to the API.';
COMMENT ON COLUMN summary_breakdown.snapshot_date IS 'UTC date of the run (or the --as-of date of a backfill).';
COMMENT ON COLUMN summary_breakdown.fetched_at IS 'When the API answered.';
COMMENT ON COLUMN summary_breakdown.dimension IS 'Which map: tld, type, attribute, platform_type, semantic_location or country.';
COMMENT ON COLUMN summary_breakdown.key IS 'The map key as the API sent it (may be the empty string).';
COMMENT ON COLUMN summary_breakdown.links IS 'Number of referring links with that key.';

-- requests: the request ledger, appended while a run goes.
CREATE TABLE requests (
    run_id        text             NOT NULL,
    pipeline      text             NOT NULL,
    snapshot_date date             NOT NULL,
    endpoint      text             NOT NULL,
    target        text             NOT NULL,
    page          bigint           NOT NULL,
    started_at    timestamptz      NOT NULL,
    attempts      bigint           NOT NULL,
    http_status   bigint,
    status_code   bigint,
    cost          double precision NOT NULL,
    bytes         bigint           NOT NULL,
    latency_ms    bigint           NOT NULL,
    task_id       text,
    error         text
);

CREATE INDEX requests_run_id_idx ON requests (run_id);
CREATE INDEX requests_pipeline_snapshot_date_idx ON requests (pipeline, snapshot_date);

COMMENT ON TABLE requests IS
    'The request ledger: one row per API request of a run (every page of every target), with its outcome and cost. Append-only.';
COMMENT ON COLUMN requests.run_id IS 'The run that made the request (runs.run_id).';
COMMENT ON COLUMN requests.pipeline IS 'Name of the pipeline.';
COMMENT ON COLUMN requests.snapshot_date IS 'Snapshot date of the run.';
COMMENT ON COLUMN requests.endpoint IS 'Short name of the API endpoint, e.g. summary.';
COMMENT ON COLUMN requests.target IS 'The target the request was for.';
COMMENT ON COLUMN requests.page IS 'Page of a paged endpoint, 0 for the first.';
COMMENT ON COLUMN requests.started_at IS 'When the first attempt was sent.';
COMMENT ON COLUMN requests.attempts IS 'Attempts made, retries included.';
COMMENT ON COLUMN requests.http_status IS 'HTTP status of the last attempt; NULL when no response arrived.';
COMMENT ON COLUMN requests.status_code IS 'DataForSEO status code of the last attempt (e.g. 20000 ok, 40102 no results).';
COMMENT ON COLUMN requests.cost IS 'Cost in USD the API reported, summed over attempts.';
COMMENT ON COLUMN requests.bytes IS 'Response bytes received, summed over attempts.';
COMMENT ON COLUMN requests.latency_ms IS 'Wall time in milliseconds from the first send to the final answer, retries and waits included.';
COMMENT ON COLUMN requests.task_id IS 'DataForSEO task id, when the API gave one.';
COMMENT ON COLUMN requests.error IS 'Why the request failed; NULL on success.';

-- runs: the run ledger, one row per run, inserted at the start and updated
-- at the end.
CREATE TABLE runs (
    run_id         text             NOT NULL,
    pipeline       text             NOT NULL,
    snapshot_date  date             NOT NULL,
    started_at     timestamptz      NOT NULL,
    finished_at    timestamptz,
    status         text             NOT NULL,
    units_total    bigint           NOT NULL,
    units_ok       bigint           NOT NULL,
    units_failed   bigint           NOT NULL,
    requests       bigint           NOT NULL,
    retries        bigint           NOT NULL,
    cost_usd       double precision NOT NULL,
    rows           jsonb            NOT NULL,
    unknown_fields jsonb            NOT NULL,
    settings       jsonb            NOT NULL,
    error          text,
    PRIMARY KEY (run_id)
);

CREATE INDEX runs_pipeline_snapshot_date_idx ON runs (pipeline, snapshot_date);

COMMENT ON TABLE runs IS
    'The run ledger: one row per run of a pipeline, written when the run starts and updated when it ends.';
COMMENT ON COLUMN runs.run_id IS 'Unique id of the run.';
COMMENT ON COLUMN runs.pipeline IS 'Name of the pipeline.';
COMMENT ON COLUMN runs.snapshot_date IS 'Snapshot date the run wrote.';
COMMENT ON COLUMN runs.started_at IS 'When the run started.';
COMMENT ON COLUMN runs.finished_at IS 'When the run ended; NULL while it runs.';
COMMENT ON COLUMN runs.status IS 'running, succeeded, partial, failed, interrupted or account_error.';
COMMENT ON COLUMN runs.units_total IS 'Work units (endpoint and target) the run planned.';
COMMENT ON COLUMN runs.units_ok IS 'Work units that succeeded.';
COMMENT ON COLUMN runs.units_failed IS 'Work units that failed.';
COMMENT ON COLUMN runs.requests IS 'Logical API requests of the run (a request and its retries count once).';
COMMENT ON COLUMN runs.retries IS 'Retries made, over all requests.';
COMMENT ON COLUMN runs.cost_usd IS 'Total cost of the run in USD.';
COMMENT ON COLUMN runs.rows IS 'Rows written per dataset, as a JSON object.';
COMMENT ON COLUMN runs.unknown_fields IS 'Fields the API sent that the schema does not know, with how often they were seen, as a JSON object.';
COMMENT ON COLUMN runs.settings IS 'The effective settings of the run as a JSON object (never credentials).';
COMMENT ON COLUMN runs.error IS 'Why the run failed; NULL otherwise.';

-- summary_trend: each summary with the change since the previous snapshot
-- of the same pipeline and target.
CREATE VIEW summary_trend AS
SELECT
    pipeline,
    target,
    snapshot_date,
    rank,
    backlinks,
    referring_domains,
    referring_main_domains,
    broken_backlinks,
    backlinks_spam_score,
    info_target_spam_score,
    lag(snapshot_date) OVER w                          AS previous_snapshot_date,
    rank - lag(rank) OVER w                            AS rank_change,
    backlinks - lag(backlinks) OVER w                  AS backlinks_change,
    referring_domains - lag(referring_domains) OVER w  AS referring_domains_change,
    referring_main_domains
        - lag(referring_main_domains) OVER w           AS referring_main_domains_change,
    broken_backlinks - lag(broken_backlinks) OVER w    AS broken_backlinks_change,
    backlinks_spam_score
        - lag(backlinks_spam_score) OVER w             AS backlinks_spam_score_change,
    info_target_spam_score
        - lag(info_target_spam_score) OVER w           AS info_target_spam_score_change
FROM summary
WINDOW w AS (PARTITION BY pipeline, target ORDER BY snapshot_date);

COMMENT ON VIEW summary_trend IS
    'Each summary row with the previous snapshot date of the same pipeline and target and, per metric, the change since then (current minus previous; NULL for the first snapshot or when either value is NULL).';
