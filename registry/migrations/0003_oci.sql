-- The OCI distribution face of the store. Blob bytes (including manifest
-- bytes) live in the content-addressed blob store; these tables say which
-- repository holds what.
CREATE TABLE oci_blob_links (
    repo   TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (repo, digest)
) STRICT;

CREATE TABLE oci_manifests (
    repo          TEXT    NOT NULL,
    digest        TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    artifact_type TEXT,
    subject       TEXT,
    annotations   TEXT,
    created_at    TEXT    NOT NULL,
    PRIMARY KEY (repo, digest)
) STRICT;
CREATE INDEX oci_manifests_subject ON oci_manifests (repo, subject) WHERE subject IS NOT NULL;

CREATE TABLE oci_tags (
    repo   TEXT NOT NULL,
    tag    TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (repo, tag)
) STRICT;

-- Upload sessions; their bytes are in blobs/uploads/<id>.
CREATE TABLE oci_uploads (
    id         TEXT    PRIMARY KEY,
    repo       TEXT    NOT NULL,
    started_at INTEGER NOT NULL
) STRICT;
