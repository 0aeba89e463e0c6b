-- The access paths of a page of `GET /v1/objects` (`repo::list_statements`).
-- Each holds the current objects of one exact filter in id order (sqlite
-- appends the rowid to every index key), so a page of that filter is a
-- range search (`column = ? AND rowid > ?`) that stops at the page's end,
-- however few rows match and wherever they are. A kernel release's rows
-- come from the identity index (migration 0001).
--
-- Not a migration: every process that opens the index makes them when
-- they are missing (`Repo::open`). sqlx's migrator refuses to open a
-- database holding a migration the binary does not know ("migration 7 was
-- previously applied but is missing in the resolved migrations"), so a
-- migration here would stop an older `bpfarm-registry` (a rolling
-- restart, an older `gc`, `import` or `fsck`) from opening the index. An
-- index changes no row and no answer: an older binary's writes keep it up
-- to date (sqlite does), and its queries may use it.
CREATE INDEX IF NOT EXISTS objects_by_arch ON objects (arch) WHERE current = 1;
CREATE INDEX IF NOT EXISTS objects_by_version ON objects (version) WHERE current = 1;
CREATE INDEX IF NOT EXISTS objects_by_version_arch ON objects (version, arch) WHERE current = 1;
CREATE INDEX IF NOT EXISTS objects_by_uname_version ON objects (uname_version)
    WHERE current = 1 AND uname_version IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_by_config_digest ON objects (config_digest)
    WHERE current = 1 AND config_digest IS NOT NULL;
