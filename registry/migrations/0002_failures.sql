-- Builds that failed, as reported by builders, for the coverage page. A
-- successful publish of the same identity removes its failure.
CREATE TABLE failures (
    kernel_release TEXT NOT NULL,
    arch           TEXT NOT NULL,
    version        TEXT NOT NULL,
    message        TEXT NOT NULL,
    reported_at    TEXT NOT NULL,
    PRIMARY KEY (kernel_release, arch, version)
) STRICT;
