-- backlinks/live: every backlink of a target, and the redirect hops of the
-- indirect ones. The tables mirror the Arrow schemas `backlinks` and
-- `backlink_redirects` of crates/model/src/schema.rs column for column (same
-- names, same order). Both are replaced whole per pipeline, target and
-- snapshot date, like summary.

-- backlinks: one row per backlink item.
CREATE TABLE backlinks (
    pipeline                          text        NOT NULL,
    target                            text        NOT NULL,
    snapshot_date                     date        NOT NULL,
    fetched_at                        timestamptz NOT NULL,
    position                          bigint      NOT NULL,
    task_id                           text,
    type                              text,
    domain_from                       text,
    url_from                          text,
    url_from_https                    boolean,
    domain_to                         text,
    url_to                            text,
    url_to_https                      boolean,
    tld_from                          text,
    is_new                            boolean,
    is_lost                           boolean,
    backlink_spam_score               bigint,
    rank                              bigint,
    page_from_rank                    bigint,
    domain_from_rank                  bigint,
    domain_from_platform_type         text[],
    domain_from_is_ip                 boolean,
    domain_from_ip                    text,
    domain_from_country               text,
    page_from_external_links          bigint,
    page_from_internal_links          bigint,
    page_from_size                    bigint,
    page_from_encoding                text,
    page_from_language                text,
    page_from_title                   text,
    page_from_status_code             bigint,
    first_seen                        timestamptz,
    prev_seen                         timestamptz,
    last_seen                         timestamptz,
    item_type                         text,
    attributes                        text[],
    dofollow                          boolean,
    original                          boolean,
    alt                               text,
    image_url                         text,
    anchor                            text,
    text_pre                          text,
    text_post                         text,
    semantic_location                 text,
    links_count                       bigint,
    group_count                       bigint,
    is_broken                         boolean,
    url_to_status_code                bigint,
    url_to_spam_score                 bigint,
    url_to_redirect_target            text,
    page_from_keywords_count_top_3    bigint,
    page_from_keywords_count_top_10   bigint,
    page_from_keywords_count_top_100  bigint,
    is_indirect_link                  boolean,
    indirect_link_hops                bigint,
    extra                             jsonb,
    PRIMARY KEY (pipeline, target, snapshot_date, position)
);

CREATE INDEX backlinks_pipeline_snapshot_date_idx ON backlinks (pipeline, snapshot_date);
CREATE INDEX backlinks_domain_from_idx ON backlinks (domain_from);

COMMENT ON TABLE backlinks IS
    'One row per backlink of a target, as DataForSEO backlinks/live lists them: every field of the item under its own name. Replaced per pipeline, target and snapshot date.';
COMMENT ON COLUMN backlinks.pipeline IS 'Name of the pipeline that fetched the row.';
COMMENT ON COLUMN backlinks.target IS 'The target as sent to the API: a normalised domain (lowercase, punycode, no www.) or an absolute URL.';
COMMENT ON COLUMN backlinks.snapshot_date IS 'UTC date of the run (or the --as-of date of a backfill).';
COMMENT ON COLUMN backlinks.fetched_at IS 'When the API answered the page the row came from.';
COMMENT ON COLUMN backlinks.position IS '0-based index of the backlink in the target''s full result list (for the request''s mode, filters and order); the row key within a partition.';
COMMENT ON COLUMN backlinks.task_id IS 'DataForSEO task id of the page the backlink came from.';
COMMENT ON COLUMN backlinks.type IS 'Item type as the API names it (backlink).';
COMMENT ON COLUMN backlinks.domain_from IS 'Domain of the referring page.';
COMMENT ON COLUMN backlinks.url_from IS 'URL of the referring page.';
COMMENT ON COLUMN backlinks.url_from_https IS 'Whether the referring page is served over HTTPS.';
COMMENT ON COLUMN backlinks.domain_to IS 'Domain the link points to.';
COMMENT ON COLUMN backlinks.url_to IS 'URL the link points to.';
COMMENT ON COLUMN backlinks.url_to_https IS 'Whether the linked URL uses HTTPS.';
COMMENT ON COLUMN backlinks.tld_from IS 'Top-level domain of the referring page.';
COMMENT ON COLUMN backlinks.is_new IS 'Whether the backlink appeared since the previous crawl.';
COMMENT ON COLUMN backlinks.is_lost IS 'Whether the backlink has been lost.';
COMMENT ON COLUMN backlinks.backlink_spam_score IS 'Spam score of the backlink (0 to 100).';
COMMENT ON COLUMN backlinks.rank IS 'DataForSEO rank of the backlink.';
COMMENT ON COLUMN backlinks.page_from_rank IS 'DataForSEO rank of the referring page.';
COMMENT ON COLUMN backlinks.domain_from_rank IS 'DataForSEO rank of the referring domain.';
COMMENT ON COLUMN backlinks.domain_from_platform_type IS 'Platform types of the referring domain (e.g. cms, blogs).';
COMMENT ON COLUMN backlinks.domain_from_is_ip IS 'Whether the referring domain is an IP address.';
COMMENT ON COLUMN backlinks.domain_from_ip IS 'IP address of the referring domain.';
COMMENT ON COLUMN backlinks.domain_from_country IS 'Country of the referring domain''s server.';
COMMENT ON COLUMN backlinks.page_from_external_links IS 'External links on the referring page.';
COMMENT ON COLUMN backlinks.page_from_internal_links IS 'Internal links on the referring page.';
COMMENT ON COLUMN backlinks.page_from_size IS 'Size of the referring page in bytes.';
COMMENT ON COLUMN backlinks.page_from_encoding IS 'Character encoding of the referring page.';
COMMENT ON COLUMN backlinks.page_from_language IS 'Language of the referring page.';
COMMENT ON COLUMN backlinks.page_from_title IS 'Title of the referring page.';
COMMENT ON COLUMN backlinks.page_from_status_code IS 'HTTP status code of the referring page.';
COMMENT ON COLUMN backlinks.first_seen IS 'When DataForSEO first saw the backlink.';
COMMENT ON COLUMN backlinks.prev_seen IS 'When DataForSEO saw the backlink the time before last.';
COMMENT ON COLUMN backlinks.last_seen IS 'When DataForSEO last saw the backlink.';
COMMENT ON COLUMN backlinks.item_type IS 'Kind of link: anchor, image, link, meta, canonical, alternate, redirect.';
COMMENT ON COLUMN backlinks.attributes IS 'Link attributes (e.g. nofollow, ugc, sponsored); an empty array when there are none.';
COMMENT ON COLUMN backlinks.dofollow IS 'Whether the link is dofollow.';
COMMENT ON COLUMN backlinks.original IS 'Whether the backlink was present when DataForSEO first saw the referring page.';
COMMENT ON COLUMN backlinks.alt IS 'Alt text of an image link.';
COMMENT ON COLUMN backlinks.image_url IS 'URL of the image of an image link.';
COMMENT ON COLUMN backlinks.anchor IS 'Anchor text of the link.';
COMMENT ON COLUMN backlinks.text_pre IS 'Text right before the link.';
COMMENT ON COLUMN backlinks.text_post IS 'Text right after the link.';
COMMENT ON COLUMN backlinks.semantic_location IS 'HTML element the link sits in (e.g. article, footer).';
COMMENT ON COLUMN backlinks.links_count IS 'Identical links from the referring page to the target.';
COMMENT ON COLUMN backlinks.group_count IS 'Backlinks grouped into this one (modes one_per_domain and one_per_anchor).';
COMMENT ON COLUMN backlinks.is_broken IS 'Whether the linked URL is broken.';
COMMENT ON COLUMN backlinks.url_to_status_code IS 'HTTP status code of the linked URL.';
COMMENT ON COLUMN backlinks.url_to_spam_score IS 'Spam score of the linked URL (0 to 100).';
COMMENT ON COLUMN backlinks.url_to_redirect_target IS 'Where the linked URL redirects to, if it does.';
COMMENT ON COLUMN backlinks.page_from_keywords_count_top_3 IS 'Keywords the referring page ranks for in the top 3 (ranked_keywords_info).';
COMMENT ON COLUMN backlinks.page_from_keywords_count_top_10 IS 'Keywords the referring page ranks for in the top 10 (ranked_keywords_info).';
COMMENT ON COLUMN backlinks.page_from_keywords_count_top_100 IS 'Keywords the referring page ranks for in the top 100 (ranked_keywords_info).';
COMMENT ON COLUMN backlinks.is_indirect_link IS 'Whether the link reaches the target through redirects or canonicals.';
COMMENT ON COLUMN backlinks.indirect_link_hops IS 'Number of hops of indirect_link_path (rows in backlink_redirects); NULL when the API sent no path.';
COMMENT ON COLUMN backlinks.extra IS 'Fields the API sent that the schema does not know, as a JSON object (those of ranked_keywords_info under "ranked_keywords_info"); NULL when there were none.';

-- backlink_redirects: indirect_link_path as rows.
CREATE TABLE backlink_redirects (
    pipeline      text        NOT NULL,
    target        text        NOT NULL,
    snapshot_date date        NOT NULL,
    fetched_at    timestamptz NOT NULL,
    position      bigint      NOT NULL,
    hop           bigint      NOT NULL,
    type          text,
    status_code   bigint,
    url           text,
    PRIMARY KEY (pipeline, target, snapshot_date, position, hop)
);

COMMENT ON TABLE backlink_redirects IS
    'The hops of an indirect backlink (its indirect_link_path), one row per hop; join to backlinks on pipeline, target, snapshot_date and position. Replaced per pipeline, target and snapshot date together with backlinks.';
COMMENT ON COLUMN backlink_redirects.pipeline IS 'Name of the pipeline that fetched the row.';
COMMENT ON COLUMN backlink_redirects.target IS 'The target as sent to the API.';
COMMENT ON COLUMN backlink_redirects.snapshot_date IS 'UTC date of the run (or the --as-of date of a backfill).';
COMMENT ON COLUMN backlink_redirects.fetched_at IS 'When the API answered the page the row came from.';
COMMENT ON COLUMN backlink_redirects.position IS 'The backlink''s position (backlinks.position).';
COMMENT ON COLUMN backlink_redirects.hop IS '0-based index of the hop in indirect_link_path.';
COMMENT ON COLUMN backlink_redirects.type IS 'Kind of hop, e.g. redirect, canonical, meta_refresh.';
COMMENT ON COLUMN backlink_redirects.status_code IS 'HTTP status code of the hop (e.g. 301).';
COMMENT ON COLUMN backlink_redirects.url IS 'URL of the hop.';
