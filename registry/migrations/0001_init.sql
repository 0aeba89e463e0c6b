-- Objects: one row per publish. The current object of an identity has
-- current = 1; a replaced one stays as history with current = 0.
CREATE TABLE objects (
    id             INTEGER PRIMARY KEY,
    kernel_release TEXT    NOT NULL,
    arch           TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    file_name      TEXT    NOT NULL,
    digest         TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    uname_version  TEXT,
    config_digest  TEXT,
    metadata       TEXT    NOT NULL,
    published_at   TEXT    NOT NULL,
    current        INTEGER NOT NULL DEFAULT 1
) STRICT;

CREATE UNIQUE INDEX objects_current_identity ON objects (kernel_release, arch, version) WHERE current = 1;
CREATE INDEX objects_static_path ON objects (version, arch, file_name) WHERE current = 1;

-- Tokens are stored as the sha256 of the token; the token itself is shown once.
CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    scope      TEXT NOT NULL CHECK (scope IN ('push', 'read')),
    hash       TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
