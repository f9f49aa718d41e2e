//! The claim statements of limited queues, run after the queue's advisory lock in the same
//! transaction (so each sees every limited fetch committed before it). Times come from the
//! database: `clock_timestamp()` read once per statement, after the lock, is both the claimed
//! rows' `attempted_at` and the start log's time, so the rate windows never depend on a
//! worker's clock.

use crate::limits::PartitionBy;
use crate::postgres::rows::FETCHED_COLUMNS;

/// The states a job waits in.
const WAITING: &str = "state IN ('available', 'scheduled', 'retryable')";

/// The partition of a row of `windlass_jobs`, as SQL (the opt-in partition index is built on
/// this very expression, so the planner can use it). The args field was validated (ASCII
/// letters, digits, `_`, `-`): it cannot close the literal.
pub(crate) fn part_expr(by: &PartitionBy) -> String {
    match by {
        PartitionBy::Org => "coalesce(org_id, ''::text)".to_owned(),
        PartitionBy::Kind => "kind".to_owned(),
        PartitionBy::Arg(f) => format!("coalesce((args ->> '{f}'::text), ''::text)"),
    }
}

/// The common tail: the claimed rows' update, the start log, the pruning of the log.
/// `$horizon` is the parameter holding the log's horizon in seconds (0: no rate limit, no log).
fn claim_tail(part: &str, horizon: &str) -> String {
    format!(
        "claimed AS ( \
             UPDATE windlass_jobs j \
                SET state = 'running', attempt = j.attempt + 1, attempted_at = (SELECT now FROM t), \
                    heartbeat_at = now(), locked_by = $3 \
               FROM next WHERE j.id = next.id \
             RETURNING {FETCHED_COLUMNS}, {part} AS part), \
         logged AS ( \
             INSERT INTO windlass_job_starts (queue, part, at, n) \
             SELECT $1, c.part, t.now, count(*)::int4 FROM claimed c, t \
              WHERE {horizon}::float8 > 0 GROUP BY c.part, t.now), \
         pruned AS ( \
             DELETE FROM windlass_job_starts s USING t \
              WHERE {horizon}::float8 > 0 AND s.queue = $1 \
                AND s.at <= t.now - make_interval(secs => {horizon}::float8))"
    )
}

/// The claim of a limited queue without partitions. Parameters: `$1` queue, `$2` wanted,
/// `$3` worker, `$4` kinds, `$5` global limit (NULL: none), `$6` rate (NULL: none), `$7` its
/// period in seconds, `$8` the start log's horizon in seconds (0: no rate limit).
pub(super) fn unpartitioned() -> String {
    let tail = claim_tail("''::text", "$8");
    format!(
        "WITH t AS (SELECT clock_timestamp() AS now), \
         running AS (SELECT count(*) AS n FROM windlass_jobs WHERE queue = $1 AND state = 'running'), \
         started AS ( \
             SELECT coalesce(sum(s.n), 0) AS n FROM windlass_job_starts s, t \
              WHERE $6::int8 IS NOT NULL AND s.queue = $1 \
                AND s.at > t.now - make_interval(secs => $7::float8)), \
         room AS ( \
             SELECT greatest(0, least($2::int8, \
                 coalesce($5::int8 - (SELECT n FROM running), $2::int8), \
                 coalesce($6::int8 - (SELECT n FROM started), $2::int8))) AS n), \
         next AS ( \
             SELECT id FROM windlass_jobs \
              WHERE queue = $1 AND {WAITING} AND run_at <= now() \
                AND (cardinality($4::text[]) = 0 OR kind = ANY($4)) \
                AND NOT EXISTS (SELECT 1 FROM windlass_job_queues WHERE name = $1 AND paused) \
              ORDER BY priority, run_at, id \
              LIMIT (SELECT n FROM room) \
              FOR UPDATE SKIP LOCKED), \
         {tail} \
         SELECT * FROM claimed"
    )
}

/// The claim of a partitioned queue: the partitions with waiting jobs (a loose index scan:
/// one index probe per partition with the partition index), each partition's most urgent due
/// jobs up to its fair share of the room and its own limits, claimed round-robin (each
/// partition's first job, least recently served partition first, then each one's second, ...).
/// Nothing is read when no room is left (a queue at its global limit).
/// Parameters: those of [`unpartitioned`] up to `$7`, then `$8` per-partition concurrency,
/// `$9` per-partition rate, `$10` its period in seconds, `$11` the log's horizon.
pub(super) fn partitioned(by: &PartitionBy) -> String {
    let e = part_expr(by);
    let tail = claim_tail(&e, "$11");
    format!(
        "WITH RECURSIVE t AS (SELECT clock_timestamp() AS now), \
         running AS ( \
             SELECT {e} AS part, count(*) AS n FROM windlass_jobs \
              WHERE queue = $1 AND state = 'running' GROUP BY 1), \
         started AS ( \
             SELECT s.part, \
                    coalesce(sum(s.n) FILTER (WHERE $6::int8 IS NOT NULL \
                        AND s.at > t.now - make_interval(secs => $7::float8)), 0) AS qn, \
                    coalesce(sum(s.n) FILTER (WHERE $9::int8 IS NOT NULL \
                        AND s.at > t.now - make_interval(secs => $10::float8)), 0) AS pn \
               FROM windlass_job_starts s, t WHERE s.queue = $1 GROUP BY s.part), \
         room AS ( \
             SELECT CASE WHEN EXISTS (SELECT 1 FROM windlass_job_queues WHERE name = $1 AND paused) THEN 0 \
                    ELSE greatest(0, least($2::int8, \
                        coalesce($5::int8 - (SELECT coalesce(sum(n), 0) FROM running), $2::int8), \
                        coalesce($6::int8 - (SELECT coalesce(sum(qn), 0) FROM started), $2::int8))) END AS n), \
         parts(part) AS ( \
             (SELECT {e} FROM windlass_jobs \
               WHERE (SELECT n FROM room) > 0 AND queue = $1 AND {WAITING} ORDER BY {e} LIMIT 1) \
             UNION ALL \
             SELECT (SELECT {e} FROM windlass_jobs \
                      WHERE queue = $1 AND {WAITING} AND {e} > parts.part ORDER BY {e} LIMIT 1) \
               FROM parts WHERE parts.part IS NOT NULL), \
         share AS ( \
             SELECT CASE WHEN count(*) = 0 THEN 0 \
                    ELSE ((SELECT n FROM room) + count(*) - 1) / count(*) END AS n \
               FROM parts WHERE part IS NOT NULL), \
         cand AS ( \
             SELECT c.id, c.priority, c.run_at, c.rn, \
                    coalesce(sv.served_at, '-infinity'::timestamptz) AS served \
               FROM parts p \
               LEFT JOIN running r ON r.part = p.part \
               LEFT JOIN started st ON st.part = p.part \
               LEFT JOIN windlass_job_partitions sv ON sv.queue = $1 AND sv.part = p.part \
              CROSS JOIN LATERAL ( \
                  SELECT h.id, h.priority, h.run_at, \
                         row_number() OVER (ORDER BY h.priority, h.run_at, h.id) AS rn \
                    FROM (SELECT id, priority, run_at FROM windlass_jobs \
                           WHERE queue = $1 AND {e} = p.part AND {WAITING} AND run_at <= now() \
                             AND (cardinality($4::text[]) = 0 OR kind = ANY($4)) \
                           ORDER BY priority, run_at, id \
                           LIMIT greatest(0, least((SELECT n FROM share), \
                                 coalesce($8::int8 - coalesce(r.n, 0), $2::int8), \
                                 coalesce($9::int8 - coalesce(st.pn, 0), $2::int8)))) h) c \
              WHERE p.part IS NOT NULL), \
         pick AS (SELECT id FROM cand ORDER BY rn, served, priority, run_at, id LIMIT (SELECT n FROM room)), \
         next AS ( \
             SELECT id FROM windlass_jobs \
              WHERE id IN (SELECT id FROM pick) AND {WAITING} AND run_at <= now() \
              FOR UPDATE SKIP LOCKED), \
         {tail}, \
         served AS ( \
             INSERT INTO windlass_job_partitions (queue, part, served_at) \
             SELECT $1, c.part, t.now FROM claimed c, t GROUP BY c.part, t.now \
             ON CONFLICT (queue, part) DO UPDATE SET served_at = EXCLUDED.served_at) \
         SELECT * FROM claimed"
    )
}

/// Seconds from now until the first start in a rate window leaves it (a slot may open then);
/// NULL when no window holds a start. `$1` queue, `$2` / `$3` the queue's and the partitions'
/// periods in seconds (NULL: no such rate limit).
pub(super) const NEXT_SLOT: &str = "SELECT extract(epoch FROM least( \
         (SELECT min(at) + make_interval(secs => $2::float8) FROM windlass_job_starts \
           WHERE $2::float8 IS NOT NULL AND queue = $1 \
             AND at > clock_timestamp() - make_interval(secs => $2::float8)), \
         (SELECT min(at) + make_interval(secs => $3::float8) FROM windlass_job_starts \
           WHERE $3::float8 IS NOT NULL AND queue = $1 \
             AND at > clock_timestamp() - make_interval(secs => $3::float8))) \
     - clock_timestamp())::float8";
