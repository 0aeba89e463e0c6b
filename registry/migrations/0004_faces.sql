-- The tag under which a current object's OCI form lives in
-- <namespace>/tracee-bpf. It is written in the same transaction as the
-- object row, so the two faces can be checked against each other (start-up,
-- fsck) and /v2 writes to that tag can be held to what /v1 says.
ALTER TABLE objects ADD COLUMN oci_tag TEXT;
CREATE INDEX objects_oci_tag ON objects (oci_tag) WHERE current = 1;
