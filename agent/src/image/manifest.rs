//! The JSON documents of an image: index (manifest list), manifest, config.
//!
//! OCI image spec v1 and Docker image manifest v2 schema 2 share one shape,
//! so one set of types reads both. Unknown fields are ignored on purpose
//! (unlike Berth's own configuration): the OCI spec requires consumers to
//! ignore properties they do not know, and registries and builders add them.
//! Everything here is parsed from bytes whose digest was already verified.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::digest::Digest;
use super::error::ImageError;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header for manifest requests.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An OS/architecture/variant triple as in image indexes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH name: `amd64`, `arm`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... (optional).
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in OCI (GOARCH) names. 32-bit ARM
    /// is taken to be v7, the gateways' ISA.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    /// `linux/arm/v7` style.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    /// How well an index entry for `other` runs here: `None` if it cannot,
    /// lower is better. ARM variants are backwards compatible (a v7 core
    /// runs v6 and v5 code), so they are ranked, newest first.
    fn rank(&self, other: &Platform) -> Option<u32> {
        if self.os != other.os || self.architecture != other.architecture {
            return None;
        }
        let want = self.variant.as_deref();
        let have = other.variant.as_deref();
        if want == have {
            return Some(0);
        }
        if self.architecture == "arm" {
            let n = |v: Option<&str>| v.and_then(|v| v.strip_prefix('v')?.parse::<u32>().ok());
            return match (n(want), n(have)) {
                (Some(w), Some(h)) if h <= w => Some(1 + w - h),
                (_, None) => Some(100),
                _ => None,
            };
        }
        // arm64 v8 vs no variant, amd64 v2/v3 levels: accept an entry
        // without a variant, and a "v8" entry for arm64 without one asked.
        match have {
            None => Some(50),
            Some("v8") if self.architecture == "arm64" => Some(1),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A fetched manifest-ish document, by kind.
#[derive(Debug)]
pub enum Fetched {
    /// An index / manifest list.
    Index(Index),
    /// An image manifest.
    Manifest(Manifest),
}

/// Image index / Docker manifest list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// `2`.
    pub schema_version: u32,
    /// Media type, if written in the document.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
}

/// Image manifest (OCI or Docker v2 schema 2).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `2`.
    pub schema_version: u32,
    /// Media type, if written in the document.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// Parses a manifest or index whose digest is `digest`. `content_type` is
/// the registry's `Content-Type`; the document's own `mediaType` wins.
pub fn parse_fetched(
    digest: &Digest,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<Fetched, ImageError> {
    let bad = |reason: String| ImageError::Manifest {
        digest: digest.clone(),
        reason,
    };
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    if probe.schema_version != Some(2) {
        return Err(bad(format!(
            "schemaVersion {:?} is not supported (Docker schema 1 images must be rebuilt)",
            probe.schema_version
        )));
    }
    let ct = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
    let kind = probe.media_type.as_deref().or(ct).unwrap_or("");
    let is_index = match kind {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // No media type anywhere: OCI allows that; tell by the shape.
        _ => probe.manifests.is_some(),
    };
    if is_index {
        let idx: Index =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed index: {e}")))?;
        Ok(Fetched::Index(idx))
    } else {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("malformed manifest: {e}")))?;
        for l in &m.layers {
            layer_kind(&l.media_type).ok_or_else(|| {
                bad(format!(
                    "layer {} has unsupported media type `{}`",
                    l.digest, l.media_type
                ))
            })?;
        }
        Ok(Fetched::Manifest(m))
    }
}

/// What a layer media type says about its compression (sniffed again from
/// the bytes when unpacking), or `None` for a type that is not a layer.
pub fn layer_kind(media_type: &str) -> Option<&'static str> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some("tar"),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some("gzip"),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some("zstd"),
        _ => None,
    }
}

/// Picks the index entry that runs best on `want`.
pub fn select_platform<'a>(
    index_digest: &Digest,
    index: &'a Index,
    want: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    let best = index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .filter_map(|d| Some((want.rank(d.platform.as_ref()?)?, d)))
        .min_by_key(|(rank, _)| *rank);
    match best {
        Some((_, d)) => Ok(d),
        None => Err(ImageError::NoPlatform {
            digest: index_digest.clone(),
            wanted: want.to_string(),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What the jail needs to know from the image config to start the app.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value` each.
    pub env: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `User` (`uid[:gid]` or a name; empty: root of the jail).
    pub user: String,
    /// `ExposedPorts` keys, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
}

/// The parts of the config blob Berth reads.
#[derive(Debug)]
pub struct ConfigBlob {
    /// What the app's process gets.
    pub config: ImageConfig,
    /// `rootfs.diff_ids`: digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
    /// The platform the image says it is built for.
    pub platform: Platform,
}

/// Parses the config blob `digest`.
pub fn parse_config(digest: &Digest, bytes: &[u8]) -> Result<ConfigBlob, ImageError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
        #[serde(default)]
        variant: Option<String>,
        #[serde(default)]
        config: Option<RawConfig>,
        rootfs: RawRootfs,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase")]
    struct RawConfig {
        #[serde(default)]
        entrypoint: Option<Vec<String>>,
        #[serde(default)]
        cmd: Option<Vec<String>>,
        #[serde(default)]
        env: Option<Vec<String>>,
        #[serde(default)]
        working_dir: Option<String>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        exposed_ports: Option<BTreeMap<String, serde::de::IgnoredAny>>,
    }
    #[derive(Deserialize)]
    struct RawRootfs {
        #[serde(rename = "type")]
        kind: String,
        diff_ids: Vec<Digest>,
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ImageError::Manifest {
        digest: digest.clone(),
        reason: format!("malformed image config: {e}"),
    })?;
    if raw.rootfs.kind != "layers" {
        return Err(ImageError::Manifest {
            digest: digest.clone(),
            reason: format!("rootfs.type is `{}`, not `layers`", raw.rootfs.kind),
        });
    }
    let c = raw.config.unwrap_or_default();
    Ok(ConfigBlob {
        config: ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
        },
        diff_ids: raw.rootfs.diff_ids,
        platform: Platform {
            os: raw.os,
            architecture: raw.architecture,
            variant: raw.variant,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn index() -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}
            ]}}"#,
            d('1'),
            d('2'),
            d('3'),
            d('4')
        )
        .into_bytes()
    }

    #[test]
    fn index_picks_best_arm_variant_and_reports_missing() {
        let dg = Digest::of(b"x");
        let Fetched::Index(idx) = parse_fetched(&dg, None, &index()).unwrap() else {
            panic!("not an index")
        };
        let pick = |p: Platform| select_platform(&dg, &idx, &p).map(|d| d.digest.to_string());
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v7"))).unwrap(),
            d('3')
        );
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v8"))).unwrap(),
            d('3')
        );
        assert_eq!(
            pick(Platform::new("linux", "arm", Some("v6"))).unwrap(),
            d('2')
        );
        assert_eq!(pick(Platform::new("linux", "amd64", None)).unwrap(), d('1'));
        let err = pick(Platform::new("linux", "arm", Some("v5")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no manifest for linux/arm/v5"), "{err}");
        assert!(err.contains("linux/arm/v7"), "{err}");
        let err = pick(Platform::new("linux", "riscv64", None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux/riscv64"), "{err}");
    }

    #[test]
    fn manifest_kinds_and_bad_documents() {
        let dg = Digest::of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":3,"x-extra":1}}]}}"#,
            d('a'),
            d('b')
        );
        let Fetched::Manifest(m) = parse_fetched(&dg, None, m.as_bytes()).unwrap() else {
            panic!("not a manifest")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].size, 3);
        for bad in [
            r#"{"schemaVersion":1,"fsLayers":[]}"#.to_owned(),
            "not json".to_owned(),
            format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":2}},"layers":[{{"mediaType":"text/html","digest":"{}","size":1}}]}}"#,
                d('a'),
                d('b')
            ),
            r#"{"schemaVersion":2,"config":{"digest":"sha256:../x","size":2},"layers":[]}"#
                .to_owned(),
        ] {
            let err = parse_fetched(&dg, None, bad.as_bytes()).unwrap_err();
            assert!(matches!(err, ImageError::Manifest { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn config_fields_are_read() {
        let dg = Digest::of(b"c");
        let cfg = format!(
            r#"{{"architecture":"arm","os":"linux","variant":"v7","config":{{"Entrypoint":["/app"],"Cmd":["-v"],
            "Env":["PATH=/bin"],"WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{{"8080/tcp":{{}},"53/udp":{{}}}}}},
            "rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d('e')
        );
        let c = parse_config(&dg, cfg.as_bytes()).unwrap();
        assert_eq!(c.config.entrypoint, ["/app"]);
        assert_eq!(c.config.cmd, ["-v"]);
        assert_eq!(c.config.env, ["PATH=/bin"]);
        assert_eq!(c.config.working_dir, "/srv");
        assert_eq!(c.config.user, "1000:1000");
        assert_eq!(c.config.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(c.diff_ids.len(), 1);
        assert_eq!(c.platform, Platform::new("linux", "arm", Some("v7")));
    }
}
