-- What a publisher signed for an object (issue #11): its `<file>.sig` and
-- `<file>.intoto.jsonl` (blobs, by digest and size) and the cosign
-- simple-signing signature of its OCI manifest (the payload a blob, the
-- base64 signature here), from which the `sha256-<hex>.sig` and `.att` tags
-- of the /v2 face are written. One row per object row, so a replaced object
-- keeps its own in history and a new object starts without any; written in
-- the same transaction as the object row and its OCI form.
CREATE TABLE object_signatures (
    object_id          INTEGER PRIMARY KEY REFERENCES objects (id),
    signature_digest   TEXT    NOT NULL,
    signature_size     INTEGER NOT NULL,
    attestation_digest TEXT,
    attestation_size   INTEGER,
    payload_digest     TEXT,
    manifest_signature TEXT
) STRICT;
