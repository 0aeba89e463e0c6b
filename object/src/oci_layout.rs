//! Reading objects from an OCI image layout on disk — a bundle from
//! `bpfarm-registry bundle` unpacked, `oras copy --to-oci-layout`, `skopeo
//! copy … oci:DIR` — with no server: a USB stick, a ConfigMap, an image
//! volume (the agent's `--registry oci-layout:DIR`).
//!
//! The lookup is the one [`crate::oci_client`] makes against a registry:
//! the tag of (release, version) in `index.json` (`org.opencontainers
//! .image.ref.name`; the hashed tag when the plain one holds another
//! release) → the index → this arch's manifest, whose annotations must
//! name the identity exactly → its one layer. Every file is read with a cap
//! (`index.json` and manifests 4 MiB, the layer the size its descriptor
//! names and never over the object limit) and must hash to the digest that
//! names it. Files are opened component by component from the layout's
//! folder with `O_NOFOLLOW`, so a symlink anywhere below it (a blob, the
//! `blobs` folder) is refused, never followed out of the directory; a
//! FIFO or device is refused without blocking.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use serde_json::Value;

use crate::{Digest, Identity, ObjectMetadata, Origin, oci};

/// Cap on `index.json`, a manifest or an index.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The annotation naming a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not an OCI image layout: {why}", .path.display())]
    NotLayout { path: PathBuf, why: String },
    #[error("{}: {entry} is a symbolic link; refusing to follow it", .path.display())]
    Symlink { path: PathBuf, entry: String },
    #[error("{}: {entry} is not a regular file", .path.display())]
    NotRegular { path: PathBuf, entry: String },
    #[error("{}: {entry} is {size} bytes, over the {limit}-byte limit", .path.display())]
    TooLarge { path: PathBuf, entry: String, size: u64, limit: u64 },
    #[error("{}: {entry} is {actual} bytes, its descriptor says {claimed}", .path.display())]
    Size { path: PathBuf, entry: String, claimed: u64, actual: u64 },
    #[error("{}: {entry} hashes to {actual}, not the {expected} that names it", .path.display())]
    Digest { path: PathBuf, entry: String, expected: Digest, actual: Digest },
    #[error("{}: {what}: {message}", .path.display())]
    Invalid { path: PathBuf, what: String, message: String },
    #[error("{}: {entry}: {source}", .path.display())]
    Io {
        path: PathBuf,
        entry: String,
        #[source]
        source: std::io::Error,
    },
}

/// An OCI image layout in a folder.
#[derive(Debug)]
pub struct OciLayout {
    dir: OwnedFd,
    path: PathBuf,
    max_object_bytes: u64,
}

/// An object found in OCI: its metadata, its bytes, and the exact bytes of
/// the platform manifest whose one layer it is (what cosign signs).
pub type WithManifest = (ObjectMetadata, Vec<u8>, Vec<u8>);

/// A descriptor as read from the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl OciLayout {
    /// Opens the layout in `dir` (which must hold `oci-layout` with
    /// version 1.0.0). No object larger than `max_object_bytes` is read.
    pub fn open(dir: &Path, max_object_bytes: u64) -> Result<Self, LayoutError> {
        let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| LayoutError::Open { path: dir.to_owned(), source: e.into() })?;
        let layout = Self { dir: fd, path: dir.to_owned(), max_object_bytes };
        let bytes = layout.read_file(&["oci-layout"], 4 << 10)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| LayoutError::NotLayout {
            path: dir.to_owned(),
            why: format!("oci-layout is not JSON: {e}"),
        })?;
        if v["imageLayoutVersion"] != "1.0.0" {
            return Err(LayoutError::NotLayout {
                path: dir.to_owned(),
                why: format!("imageLayoutVersion is {}, not \"1.0.0\"", v["imageLayoutVersion"]),
            });
        }
        Ok(layout)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `parts` below the layout's folder without following a link
    /// at any step, and reads it whole if it is a regular file of at most
    /// `limit` bytes.
    fn read_file(&self, parts: &[&str], limit: u64) -> Result<Vec<u8>, LayoutError> {
        let entry = parts.join("/");
        let io = |e: rustix::io::Errno| {
            if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                LayoutError::Symlink { path: self.path.clone(), entry: entry.clone() }
            } else {
                LayoutError::Io { path: self.path.clone(), entry: entry.clone(), source: e.into() }
            }
        };
        let mut dir: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            let at = dir.as_ref().unwrap_or(&self.dir);
            let last = i + 1 == parts.len();
            let flags = OFlags::RDONLY
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC
                | OFlags::NONBLOCK
                | if last { OFlags::empty() } else { OFlags::DIRECTORY };
            let fd = rustix::fs::openat(at, *part, flags, Mode::empty()).map_err(io)?;
            dir = Some(fd);
        }
        let Some(fd) = dir else {
            return Err(LayoutError::NotRegular { path: self.path.clone(), entry });
        };
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(LayoutError::NotRegular { path: self.path.clone(), entry });
        }
        let size = st.st_size.max(0) as u64;
        if size > limit {
            return Err(LayoutError::TooLarge { path: self.path.clone(), entry, size, limit });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        std::fs::File::from(fd).take(limit + 1).read_to_end(&mut bytes).map_err(|source| LayoutError::Io {
            path: self.path.clone(),
            entry: entry.clone(),
            source,
        })?;
        if bytes.len() as u64 > limit {
            return Err(LayoutError::TooLarge { path: self.path.clone(), entry, size: bytes.len() as u64, limit });
        }
        Ok(bytes)
    }

    /// A blob's bytes: exactly `size` of them (at most `limit`), hashing
    /// to `digest`.
    pub fn blob(&self, digest: &Digest, size: u64, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let entry = format!("blobs/sha256/{}", digest.hex());
        if size > limit {
            return Err(LayoutError::TooLarge { path: self.path.clone(), entry, size, limit });
        }
        let bytes = self.read_file(&["blobs", "sha256", digest.hex()], size)?;
        if bytes.len() as u64 != size {
            return Err(LayoutError::Size {
                path: self.path.clone(),
                entry,
                claimed: size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(LayoutError::Digest { path: self.path.clone(), entry, expected: digest.clone(), actual });
        }
        Ok(bytes)
    }

    fn invalid(&self, what: impl Into<String>, message: impl Into<String>) -> LayoutError {
        LayoutError::Invalid { path: self.path.clone(), what: what.into(), message: message.into() }
    }

    /// The descriptor `index.json` names under `tag`, if any.
    pub fn resolve(&self, tag: &str) -> Result<Option<Descriptor>, LayoutError> {
        let bytes = self.read_file(&["index.json"], MAX_MANIFEST)?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| self.invalid("index.json", format!("not JSON: {e}")))?;
        let entries = v["manifests"].as_array().ok_or_else(|| self.invalid("index.json", "no manifests array"))?;
        let Some(e) = entries.iter().find(|e| e["annotations"][REF_NAME] == tag) else { return Ok(None) };
        let what = format!("index.json entry {tag}");
        let digest: Digest = e["digest"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|err: crate::DigestError| self.invalid(&what, err.to_string()))?;
        let size = e["size"].as_u64().ok_or_else(|| self.invalid(&what, "no size"))?;
        let media_type = e["mediaType"].as_str().unwrap_or_default().to_owned();
        Ok(Some(Descriptor { media_type, digest, size }))
    }

    /// The index under (release, version)'s tag: the plain tag, or the
    /// hashed one when the plain one holds another release.
    fn index_for(&self, id: &Identity) -> Result<Option<(String, Value)>, LayoutError> {
        for hashed in [false, true] {
            let tag = oci::tag(&id.kernel_release, &id.version, hashed);
            let Some(d) = self.resolve(&tag)? else { continue };
            let bytes = self.blob(&d.digest, d.size, MAX_MANIFEST)?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| self.invalid(format!("index {}", d.digest), format!("not JSON: {e}")))?;
            if v["annotations"][oci::ANN_RELEASE] == id.kernel_release.as_str() {
                return Ok(Some((tag, v)));
            }
        }
        Ok(None)
    }

    /// The object for `id`: `None` when the layout has none. The same
    /// checks as a fetch from a registry (see the module docs).
    pub fn fetch(&self, id: &Identity) -> Result<Option<(ObjectMetadata, Vec<u8>)>, LayoutError> {
        Ok(self.fetch_with_manifest(id)?.map(|(meta, bytes, _)| (meta, bytes)))
    }

    /// A manifest `index.json` names under `tag` (cosign's
    /// `sha256-<hex>.sig` / `.att`), at most `cap` bytes and hashing to its
    /// descriptor's digest; `None` when no entry has that tag.
    pub fn tagged_manifest(&self, tag: &str, cap: u64) -> Result<Option<Vec<u8>>, LayoutError> {
        match self.resolve(tag)? {
            Some(d) => Ok(Some(self.blob(&d.digest, d.size, cap.min(MAX_MANIFEST))?)),
            None => Ok(None),
        }
    }

    /// A blob by digest alone (a signature payload, an envelope): at most
    /// `limit` bytes, hashing to `digest`.
    pub fn blob_capped(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, LayoutError> {
        let bytes = self.read_file(&["blobs", "sha256", digest.hex()], limit)?;
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            let entry = format!("blobs/sha256/{}", digest.hex());
            return Err(LayoutError::Digest { path: self.path.clone(), entry, expected: digest.clone(), actual });
        }
        Ok(bytes)
    }

    /// [`OciLayout::fetch`], also returning the platform manifest's exact
    /// bytes: what a cosign signature (`sha256-<hex>.sig`) names by digest.
    pub fn fetch_with_manifest(&self, id: &Identity) -> Result<Option<WithManifest>, LayoutError> {
        let Some((tag, index)) = self.index_for(id)? else { return Ok(None) };
        let arch = oci::oci_arch(id.arch);
        let Some(entry) =
            index["manifests"].as_array().and_then(|m| m.iter().find(|m| m["platform"]["architecture"] == arch))
        else {
            return Ok(None);
        };
        let what = format!("tag {tag}");
        let md: Digest = entry["digest"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|e: crate::DigestError| self.invalid(&what, format!("the index's {arch} entry: {e}")))?;
        let msize = entry["size"].as_u64().ok_or_else(|| self.invalid(&what, "the index entry has no size"))?;
        let manifest = self.blob(&md, msize, MAX_MANIFEST)?;
        let m: Value =
            serde_json::from_slice(&manifest).map_err(|e| self.invalid(&what, format!("manifest is not JSON: {e}")))?;
        oci::check_annotations(&m, id, "").map_err(|e| self.invalid(&what, e))?;
        let layer = &m["layers"][0];
        oci::check_object_layer(layer, Some(&id.file_name())).map_err(|e| self.invalid(&what, e))?;
        let digest: Digest = layer["digest"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|e: crate::DigestError| self.invalid(&what, e.to_string()))?;
        let size = layer["size"].as_u64().ok_or_else(|| self.invalid(&what, "its layer descriptor has no size"))?;
        let bytes = self.blob(&digest, size, self.max_object_bytes)?;
        let meta = ObjectMetadata::unattested(id.clone(), digest, size, Origin::OciFetch);
        Ok(Some((meta, bytes, manifest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    fn write_layout(dir: &Path, object: &[u8], id: &Identity) {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let put = |b: &[u8]| {
            let d = Digest::of_bytes(b);
            std::fs::write(dir.join("blobs/sha256").join(d.hex()), b).unwrap();
            d
        };
        put(object);
        put(oci::EMPTY_CONFIG);
        let meta =
            ObjectMetadata::unattested(id.clone(), Digest::of_bytes(object), object.len() as u64, Origin::OciFetch);
        let m = oci::manifest(&meta);
        let md = put(&m);
        let index = oci::index(&id.kernel_release, &id.version, None, id.arch, &md, m.len() as u64);
        let xd = put(&index);
        let tag = oci::tag(&id.kernel_release, &id.version, false);
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": oci::INDEX_MEDIA_TYPE, "digest": xd.as_str(), "size": index.len(), "annotations": {REF_NAME: tag}}
        ]});
        std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
    }

    #[test]
    fn finds_verifies_and_refuses_links() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap();
        write_layout(dir.path(), b"\x7fELF object", &id);
        let layout = OciLayout::open(dir.path(), 1 << 20).unwrap();
        let (meta, bytes) = layout.fetch(&id).unwrap().unwrap();
        assert_eq!(bytes, b"\x7fELF object");
        assert_eq!(meta.digest, Digest::of_bytes(b"\x7fELF object"));
        // Another arch, another release: none.
        assert!(layout.fetch(&Identity::new("6.1.0-56-amd64", Arch::Aarch64, "v0.1.0").unwrap()).unwrap().is_none());
        assert!(layout.fetch(&Identity::new("6.1.0-57-amd64", Arch::X86_64, "v0.1.0").unwrap()).unwrap().is_none());
        // A cap under the object's size refuses it.
        let small = OciLayout::open(dir.path(), 4).unwrap();
        assert!(matches!(small.fetch(&id), Err(LayoutError::TooLarge { .. })));

        // Changed bytes of the same size: refused by digest.
        let obj = dir.path().join("blobs/sha256").join(Digest::of_bytes(b"\x7fELF object").hex());
        std::fs::write(&obj, b"\x7fELF OBJECT").unwrap();
        assert!(matches!(layout.fetch(&id), Err(LayoutError::Digest { .. })));
        // A symlink out of the folder, even to the right bytes: refused.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("o"), b"\x7fELF object").unwrap();
        std::fs::remove_file(&obj).unwrap();
        std::os::unix::fs::symlink(outside.path().join("o"), &obj).unwrap();
        let e = layout.fetch(&id).unwrap_err();
        assert!(matches!(e, LayoutError::Symlink { .. }), "{e}");
        // A symlinked blobs/ folder: refused too.
        let dir2 = tempfile::tempdir().unwrap();
        write_layout(outside.path(), b"\x7fELF object", &id);
        std::fs::copy(outside.path().join("oci-layout"), dir2.path().join("oci-layout")).unwrap();
        std::fs::copy(outside.path().join("index.json"), dir2.path().join("index.json")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("blobs"), dir2.path().join("blobs")).unwrap();
        let e = OciLayout::open(dir2.path(), 1 << 20).unwrap().fetch(&id).unwrap_err();
        assert!(matches!(e, LayoutError::Symlink { .. }), "{e}");
        // A FIFO in a blob's place: refused, without blocking.
        std::fs::remove_file(&obj).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, &obj, rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        assert!(matches!(layout.fetch(&id), Err(LayoutError::NotRegular { .. })));
        // Not a layout at all.
        let e = OciLayout::open(&outside.path().join("blobs"), 1).unwrap_err();
        assert!(e.to_string().contains("oci-layout"), "{e}");
    }
}
