-- Published kernel matrices: the (kernel release, arch) pairs a builder was
-- asked to cover (`bpfarm-builder build --matrix M --publish`), so coverage
-- counts "missing" against what exists, not only against releases seen.
-- Uploading a matrix again replaces its pairs.
CREATE TABLE matrices (
    name TEXT PRIMARY KEY,
    uploaded_at TEXT NOT NULL
);
CREATE TABLE matrix_kernels (
    matrix TEXT NOT NULL REFERENCES matrices (name) ON DELETE CASCADE,
    kernel_release TEXT NOT NULL,
    arch TEXT NOT NULL CHECK (arch IN ('x86_64', 'aarch64')),
    PRIMARY KEY (matrix, kernel_release, arch)
);
