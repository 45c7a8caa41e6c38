//! The schema, as versioned migrations applied in order at start. The SQL is portable
//! between SQLite and PostgreSQL: text ids, `BIGINT` milliseconds, `DOUBLE PRECISION`
//! costs and latencies, JSON as `TEXT`, booleans as 0/1. A migration, once released, is
//! never edited: changes are new migrations appended here.

/// `(version, statements)`; each runs in one transaction with its version row.
pub const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE inferences (
            id TEXT PRIMARY KEY,
            time_ms BIGINT NOT NULL,
            inbound TEXT NOT NULL,
            requested_model TEXT NOT NULL,
            route TEXT,
            variant TEXT,
            provider TEXT,
            model TEXT,
            stream BIGINT NOT NULL,
            error TEXT,
            request TEXT NOT NULL,
            response TEXT,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            cost DOUBLE PRECISION,
            ttft_ms DOUBLE PRECISION,
            latency_ms DOUBLE PRECISION NOT NULL,
            user_id TEXT,
            tags TEXT NOT NULL,
            episode_id TEXT
        )",
            "CREATE INDEX inferences_time ON inferences (time_ms)",
            "CREATE INDEX inferences_episode ON inferences (episode_id)",
            "CREATE TABLE attempts (
            inference_id TEXT NOT NULL,
            idx BIGINT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            latency_ms DOUBLE PRECISION NOT NULL,
            cost DOUBLE PRECISION,
            PRIMARY KEY (inference_id, idx)
        )",
            "CREATE TABLE feedback (
            id TEXT PRIMARY KEY,
            time_ms BIGINT NOT NULL,
            target TEXT NOT NULL,
            target_id TEXT NOT NULL,
            boolean BIGINT,
            score DOUBLE PRECISION,
            comment TEXT,
            demonstration TEXT
        )",
            "CREATE INDEX feedback_target ON feedback (target_id)",
        ],
    ),
    // Who called (the virtual key), whether the response cache answered, the tags as rows
    // (`key=value`, or a bare `key`) so that stats group by tag in plain SQL, and the indexes
    // stats and the key and user filters use.
    (
        2,
        &[
            "ALTER TABLE inferences ADD COLUMN key_id TEXT",
            "ALTER TABLE inferences ADD COLUMN cache_hit BIGINT NOT NULL DEFAULT 0",
            "CREATE TABLE inference_tags (
                inference_id TEXT NOT NULL,
                tag TEXT NOT NULL,
                PRIMARY KEY (inference_id, tag)
            )",
            "CREATE INDEX inference_tags_tag ON inference_tags (tag)",
            "CREATE INDEX inferences_key ON inferences (key_id, time_ms)",
            // Covers every column stats read, so that they scan this narrow index (in time
            // order: a time range reads only its part) instead of the wide rows; `id` joins
            // the tags.
            "CREATE INDEX inferences_stats ON inferences (time_ms, provider, model, route, user_id, key_id, inbound, latency_ms, error, input_tokens, output_tokens, cache_read_tokens, cost, cache_hit, id)",
            "CREATE INDEX inferences_user ON inferences (user_id, time_ms)",
        ],
    ),
    (
        3,
        &[
            "CREATE TABLE virtual_keys (
            id TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            name TEXT,
            models TEXT NOT NULL,
            rpm BIGINT,
            tpm BIGINT,
            budget_usd DOUBLE PRECISION,
            budget_period TEXT,
            expires_ms BIGINT,
            tags TEXT NOT NULL,
            metadata TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            revoked_ms BIGINT
        )",
            "CREATE TABLE key_spend (
            key_id TEXT NOT NULL,
            period TEXT NOT NULL,
            spend DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (key_id, period)
        )",
        ],
    ),
    // Daily roll-ups for stats (see `rollups.rs`); the watermark starts at 0, so the first
    // roll-up covers the history already recorded. `latencies` is a JSON histogram.
    (
        4,
        &[
            "CREATE TABLE inference_rollups (
            day BIGINT NOT NULL,
            dim TEXT NOT NULL,
            value TEXT,
            requests BIGINT NOT NULL,
            errors BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            unpriced BIGINT NOT NULL,
            cache_hits BIGINT NOT NULL,
            latencies TEXT NOT NULL
        )",
            "CREATE INDEX inference_rollups_dim ON inference_rollups (dim, day)",
            "CREATE TABLE rollup_state (id BIGINT PRIMARY KEY, watermark_ms BIGINT NOT NULL)",
            "INSERT INTO rollup_state (id, watermark_ms) VALUES (1, 0)",
        ],
    ),
    // Raw provider bodies (`[store] raw_bodies`, off by default), one row per upstream call.
    (
        5,
        &[
            "CREATE TABLE raw_bodies (
            inference_id TEXT NOT NULL,
            idx BIGINT NOT NULL,
            provider TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT NOT NULL,
            truncated BIGINT NOT NULL,
            PRIMARY KEY (inference_id, idx)
        )",
        ],
    ),
    // Virtual key scopes (JSON array of names; NULL: the default ones).
    (6, &["ALTER TABLE virtual_keys ADD COLUMN scopes TEXT"]),
    // Records over `[store] max_record_bytes`, stored cut (see `cap.rs`).
    (7, &["ALTER TABLE inferences ADD COLUMN truncated BIGINT NOT NULL DEFAULT 0"]),
    // Stored OpenAI Responses, for several gateways on one PostgreSQL (`responses.rs`).
    (
        8,
        &[
            "CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            owner TEXT,
            body TEXT NOT NULL,
            conversation TEXT NOT NULL,
            expires_ms BIGINT NOT NULL
        )",
            "CREATE INDEX responses_expiry ON responses (expires_ms)",
        ],
    ),
    // Datasets for fine-tuning and evals (`datasets.rs`): versions, their rows, and what
    // used each version (a used version never changes again).
    (
        9,
        &[
            "CREATE TABLE datasets (
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            description TEXT,
            spec TEXT NOT NULL,
            report TEXT NOT NULL,
            PRIMARY KEY (name, version)
        )",
            "CREATE TABLE dataset_rows (
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            row_id TEXT NOT NULL,
            idx BIGINT NOT NULL,
            split TEXT NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (name, version, row_id)
        )",
            "CREATE UNIQUE INDEX dataset_rows_order ON dataset_rows (name, version, idx)",
            "CREATE TABLE dataset_uses (
            name TEXT NOT NULL,
            version BIGINT NOT NULL,
            used_by TEXT NOT NULL,
            time_ms BIGINT NOT NULL,
            PRIMARY KEY (name, version, used_by)
        )",
        ],
    ),
    // Fine-tuning jobs (`tune_jobs.rs`): the job as JSON, its status, and the lease of the
    // one instance polling it.
    (
        10,
        &[
            "CREATE TABLE tune_jobs (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            body TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            lease_owner TEXT,
            lease_until_ms BIGINT NOT NULL
        )",
            "CREATE INDEX tune_jobs_status ON tune_jobs (status)",
        ],
    ),
    // Hourly roll-ups beside the daily ones, and a time-to-first-token histogram in both
    // (see `rollups.rs`). The daily roll-ups are derived data: emptied, and rebuilt with
    // their new column by the next roll-up, as the hourly ones are built from the start.
    (
        11,
        &[
            "ALTER TABLE inference_rollups ADD COLUMN ttfts TEXT NOT NULL DEFAULT '[]'",
            "DELETE FROM inference_rollups",
            "UPDATE rollup_state SET watermark_ms = 0 WHERE id = 1",
            "CREATE TABLE inference_hour_rollups (
            hour BIGINT NOT NULL,
            dim TEXT NOT NULL,
            value TEXT,
            requests BIGINT NOT NULL,
            errors BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cache_read_tokens BIGINT NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            unpriced BIGINT NOT NULL,
            cache_hits BIGINT NOT NULL,
            latencies TEXT NOT NULL,
            ttfts TEXT NOT NULL
        )",
            "CREATE INDEX inference_hour_rollups_dim ON inference_hour_rollups (dim, hour)",
            "INSERT INTO rollup_state (id, watermark_ms) VALUES (2, 0)",
        ],
    ),
    // A tag's inferences in id order (the newest page of a common tag without reading all
    // of them); it serves lookups by tag alone too.
    (
        12,
        &[
            "CREATE INDEX inference_tags_tag_id ON inference_tags (tag, inference_id)",
            "DROP INDEX inference_tags_tag",
        ],
    ),
    // Learned routers (`fungible route train`): one row per trained version; the active one
    // is the newest not retired (a rollback retires the newer ones).
    (
        13,
        &["CREATE TABLE routers (
            route TEXT NOT NULL,
            version BIGINT NOT NULL,
            created_ms BIGINT NOT NULL,
            kind TEXT NOT NULL,
            report TEXT NOT NULL,
            model TEXT NOT NULL,
            retired_ms BIGINT,
            PRIMARY KEY (route, version)
        )"],
    ),
];
