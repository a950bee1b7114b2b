-- Fingerprint of the legacy messages table: per raw channel id, the row count and an md5 over
-- every column of every row (row text in id order, times in UTC), plus the status counts and
-- one overall checksum. The same document as `tgstack legacy fingerprint` (tgstack.legacy.verify;
-- tests/integration/test_legacy_migration.py checks both agree). Read-only.
--   psql -X -q -At -v schema=telegram_gateway -v migration=ID_OR_EMPTY -f legacy-fingerprint.sql
-- migration: leave out the rows a rollback of that migration carried back ('' keeps every row).
\set ON_ERROR_STOP on
SET TimeZone = 'UTC';
SELECT to_regclass(format('%I.messages', :'schema')) IS NOT NULL AS table_exists \gset
\if :table_exists
WITH r AS (
    SELECT m.channel_id, m.status, m.id, m.created_at, m::text AS line,
           coalesce(:'migration' <> ''
                    AND (m.metadata -> 'tgstack' ->> 'carried_back_from') = :'migration',
                    false) AS carried
      FROM :"schema".messages m
), ch AS (
    SELECT r.channel_id, count(*) AS n,
           md5(string_agg(r.line, E'\n' ORDER BY r.id, r.created_at)) AS checksum
      FROM r
     WHERE NOT r.carried
     GROUP BY r.channel_id
)
SELECT json_build_object(
    'schema', :'schema',
    'exists', true,
    'rows', (SELECT count(*) FROM r WHERE NOT r.carried),
    'carried_back_rows', (SELECT count(*) FROM r WHERE r.carried),
    'excluding_carried_from', nullif(:'migration', ''),
    'statuses', (SELECT coalesce(json_object_agg(s.status, s.n ORDER BY s.status COLLATE "C"), '{}')
                   FROM (SELECT r.status, count(*) AS n FROM r WHERE NOT r.carried
                          GROUP BY r.status) s),
    'channels', (SELECT coalesce(json_object_agg(ch.channel_id,
                                                 json_build_object('rows', ch.n, 'checksum', ch.checksum)
                                                 ORDER BY ch.channel_id COLLATE "C"), '{}')
                   FROM ch),
    'checksum', (SELECT encode(sha256(convert_to(coalesce(string_agg(
                          ch.channel_id || chr(31) || ch.n || chr(31) || ch.checksum || chr(10), ''
                          ORDER BY ch.channel_id COLLATE "C"), ''), 'UTF8')), 'hex')
                   FROM ch)
);
\else
SELECT json_build_object('schema', :'schema', 'exists', false, 'rows', 0,
                         'channels', '{}'::json, 'checksum', '');
\endif
