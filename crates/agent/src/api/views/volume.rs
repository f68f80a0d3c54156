//! Volumes, as docker's volume API shapes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;

/// A volume, as `docker volume inspect` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    /// When it was made.
    pub created_at: String,
    /// `local`.
    pub driver: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The node's directory behind it.
    pub mountpoint: String,
    /// Its name.
    pub name: String,
    /// Driver options (none).
    pub options: BTreeMap<String, String>,
    /// `local`: a volume belongs to one node.
    pub scope: String,
}

/// `GET /volumes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeList {
    /// The volumes of the node that answered.
    pub volumes: Vec<Volume>,
    /// Always empty.
    pub warnings: Vec<String>,
}

/// `POST /volumes`: docker's `VolumeCreateBody`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct VolumeCreate {
    /// The name; empty for a random one.
    #[serde(default)]
    pub name: String,
    /// `local` (or empty).
    #[serde(default)]
    pub driver: String,
    /// Driver options: the local driver here takes none.
    #[serde(default)]
    pub driver_opts: BTreeMap<String, String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl From<&crate::volumes::Volume> for Volume {
    fn from(v: &crate::volumes::Volume) -> Volume {
        Volume {
            created_at: rfc3339(v.created_ms),
            driver: "local".into(),
            labels: v.labels.clone(),
            mountpoint: v.mountpoint.display().to_string(),
            name: v.name.clone(),
            options: BTreeMap::new(),
            scope: "local".into(),
        }
    }
}
