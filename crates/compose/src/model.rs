//! A compose file as written: its structure checked (unknown keys and
//! wrong shapes are errors with line and column), its scalars kept as the
//! text they were written as, with where they were written
//! ([`Scalar`]), because interpolation comes before their types: a
//! `replicas: ${REPLICAS:-2}` is a number only once interpolated.
//!
//! Keys that `docker stack deploy` ignores are accepted and listed by
//! [`Service::unsupported`] and [`ComposeFile::unsupported`], for the
//! caller's "Ignoring unsupported options: build" warning.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A scalar as written (a string, number or boolean, as its text), with
/// where it was written.
pub type Scalar = Spanned<Text>;

// Values inside the untagged enums below (`StringOrList`, `Port`, ...)
// are `Text`, not `Scalar`: serde buffers an untagged enum's input, which
// loses positions, so the position is kept on the enum's value instead
// (`Spanned<Port>`).

/// A scalar's text: `8000`, `true` and `"8000"` alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `command: echo hi` or `command: [echo, hi]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    String(Text),
    List(Vec<Text>),
}

/// `environment:` and `labels:` as a map (`KEY: value`, a null value
/// meaning "from the environment") or a list (`KEY=value`, `KEY`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MapOrList {
    Map(BTreeMap<String, Option<Text>>),
    List(Vec<Text>),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// Accepted and unused, as by docker.
    pub version: Option<Scalar>,
    pub name: Option<Scalar>,
    #[serde(default)]
    pub services: BTreeMap<String, Spanned<Service>>,
    #[serde(default)]
    pub networks: BTreeMap<String, Option<Network>>,
    #[serde(default)]
    pub volumes: BTreeMap<String, Option<Volume>>,
    secrets: Option<IgnoredAny>,
    configs: Option<IgnoredAny>,
}

impl ComposeFile {
    /// Top-level keys present that Shoal ignores.
    pub fn unsupported(&self) -> Vec<&'static str> {
        [("secrets", self.secrets.is_some()), ("configs", self.configs.is_some())]
            .into_iter()
            .filter_map(|(key, present)| present.then_some(key))
            .collect()
    }
}

/// One service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// For the exec runtime: the program on the node's PATH.
    pub image: Option<Scalar>,
    pub command: Option<Spanned<StringOrList>>,
    pub entrypoint: Option<Spanned<StringOrList>>,
    pub environment: Option<Spanned<MapOrList>>,
    pub env_file: Option<Spanned<StringOrList>>,
    #[serde(default)]
    pub ports: Vec<Spanned<Port>>,
    pub networks: Option<Spanned<ServiceNetworks>>,
    pub deploy: Option<Deploy>,
    pub healthcheck: Option<Healthcheck>,
    pub stop_grace_period: Option<Scalar>,
    pub stop_signal: Option<Scalar>,
    pub working_dir: Option<Scalar>,
    pub user: Option<Scalar>,
    pub hostname: Option<Scalar>,
    #[serde(default)]
    pub volumes: Vec<Spanned<Mount>>,
    pub labels: Option<Spanned<MapOrList>>,
    /// Start order (Swarm ignores it; Shoal honours it).
    pub depends_on: Option<Spanned<DependsOn>>,
    // What `docker stack deploy` ignores, as it does.
    build: Option<IgnoredAny>,
    cap_add: Option<IgnoredAny>,
    cap_drop: Option<IgnoredAny>,
    cgroup_parent: Option<IgnoredAny>,
    container_name: Option<IgnoredAny>,
    devices: Option<IgnoredAny>,
    external_links: Option<IgnoredAny>,
    links: Option<IgnoredAny>,
    network_mode: Option<IgnoredAny>,
    privileged: Option<IgnoredAny>,
    restart: Option<IgnoredAny>,
    security_opt: Option<IgnoredAny>,
    userns_mode: Option<IgnoredAny>,
    secrets: Option<IgnoredAny>,
    configs: Option<IgnoredAny>,
}

impl Service {
    /// Keys present that `docker stack deploy` ignores, in docker's order
    /// (alphabetical).
    pub fn unsupported(&self) -> Vec<&'static str> {
        [
            ("build", self.build.is_some()),
            ("cap_add", self.cap_add.is_some()),
            ("cap_drop", self.cap_drop.is_some()),
            ("cgroup_parent", self.cgroup_parent.is_some()),
            ("configs", self.configs.is_some()),
            ("container_name", self.container_name.is_some()),
            ("devices", self.devices.is_some()),
            ("external_links", self.external_links.is_some()),
            ("links", self.links.is_some()),
            ("network_mode", self.network_mode.is_some()),
            ("privileged", self.privileged.is_some()),
            ("restart", self.restart.is_some()),
            ("secrets", self.secrets.is_some()),
            ("security_opt", self.security_opt.is_some()),
            ("userns_mode", self.userns_mode.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, present)| present.then_some(key))
        .collect()
    }
}

/// `ports:` entries: `"8080:80"`, `80`, `"5353:53/udp"`, or the long form.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Port {
    Short(Text),
    Long(LongPort),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongPort {
    pub target: Text,
    pub published: Option<Text>,
    pub protocol: Option<Text>,
    pub mode: Option<Text>,
    /// Shoal's: `v2` sends a PROXY protocol v2 header.
    pub proxy_protocol: Option<Text>,
    /// Shoal's: `local` or `cluster`.
    pub traffic_policy: Option<Text>,
}

/// `networks:` of a service: a list of names, or a map of name to
/// settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ServiceNetworks {
    List(Vec<Text>),
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    #[serde(default)]
    pub aliases: Vec<Text>,
}

/// `depends_on:` as a list of services, or a map with a condition each.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DependsOn {
    List(Vec<Text>),
    Map(BTreeMap<String, DependsOnCondition>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOnCondition {
    /// `service_started` or `service_healthy`.
    pub condition: Option<Text>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub mode: Option<Scalar>,
    pub replicas: Option<Scalar>,
    pub labels: Option<Spanned<MapOrList>>,
    pub endpoint_mode: Option<Scalar>,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    pub restart_policy: Option<RestartPolicy>,
    pub resources: Option<Resources>,
    pub placement: Option<Placement>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    pub parallelism: Option<Scalar>,
    pub delay: Option<Scalar>,
    pub failure_action: Option<Scalar>,
    pub monitor: Option<Scalar>,
    pub max_failure_ratio: Option<Scalar>,
    pub order: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    pub condition: Option<Scalar>,
    pub delay: Option<Scalar>,
    pub max_attempts: Option<Scalar>,
    pub window: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub limits: Option<Limits>,
    pub reservations: Option<Limits>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub cpus: Option<Scalar>,
    pub memory: Option<Scalar>,
    pub pids: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub constraints: Vec<Scalar>,
    #[serde(default)]
    pub preferences: Vec<Preference>,
    pub max_replicas_per_node: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    pub spread: Scalar,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    pub test: Option<Spanned<StringOrList>>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub retries: Option<Scalar>,
    pub start_period: Option<Scalar>,
    pub disable: Option<Scalar>,
}

/// `volumes:` of a service: `source:target[:ro]`, or the long form.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Mount {
    Short(Text),
    Long(LongMount),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongMount {
    /// `volume`, `bind` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: Text,
    pub source: Option<Text>,
    pub target: Text,
    pub read_only: Option<Text>,
}

/// A top-level network.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub driver: Option<Scalar>,
    pub external: Option<Scalar>,
    pub attachable: Option<Scalar>,
    pub name: Option<Scalar>,
    pub ipam: Option<Ipam>,
    pub labels: Option<Spanned<MapOrList>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipam {
    pub driver: Option<Scalar>,
    #[serde(default)]
    pub config: Vec<IpamConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    pub subnet: Scalar,
}

/// A top-level volume.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub driver: Option<Scalar>,
    pub external: Option<Scalar>,
    pub name: Option<Scalar>,
    pub labels: Option<Spanned<MapOrList>>,
}

/// Why a compose file could not be read: the file, the line and column,
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Reads the compose file `file` (its name, for errors) from `text`.
pub fn parse(file: &str, text: &str) -> Result<ComposeFile, ParseError> {
    serde_saphyr::from_str(text).map_err(|error| {
        let (line, column) = error.location().map_or((0, 0), |at| (at.line(), at.column()));
        // The first line of the library's report is the message; the rest
        // is a snippet of the input.
        let report = error.to_string();
        let first = report.lines().next().unwrap_or_default();
        let message = first
            .strip_prefix("error: ")
            .unwrap_or(first)
            .split_once(": ")
            .filter(|(at, _)| at.starts_with("line "))
            .map_or(first, |(_, message)| message)
            .to_owned();
        ParseError { file: file.to_owned(), line, column, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed tutorial's shape: a Flask counter and redis.
    const SEED: &str = r#"
version: "3.8"
services:
  web:
    image: python3
    command: ["python3", "app.py"]
    ports:
      - "8000:8000"
    environment:
      REDIS_HOST: redis
    deploy:
      replicas: 2
      placement:
        constraints: [node.role == worker]
    depends_on:
      - redis
    build: .
  redis:
    image: redis-server
    deploy:
      replicas: ${REDIS_REPLICAS:-1}
networks:
  default: {}
"#;

    #[test]
    fn the_seed_shape_reads() {
        let file = parse("docker-compose.yml", SEED).unwrap();
        assert_eq!(file.version.as_ref().unwrap().value.0, "3.8");
        let web = &file.services["web"].value;
        assert_eq!(web.image.as_ref().unwrap().value.0, "python3");
        let Port::Short(port) = &web.ports[0].value else { panic!("{:?}", web.ports) };
        assert_eq!(port.0, "8000:8000");
        assert_eq!((web.ports[0].defined.line(), web.ports[0].defined.column()), (8, 9));
        assert_eq!(web.deploy.as_ref().unwrap().replicas.as_ref().unwrap().value.0, "2");
        assert_eq!(web.unsupported(), ["build"]);
        // Interpolation comes later: the text is kept as written.
        let redis = &file.services["redis"].value;
        let replicas = redis.deploy.as_ref().unwrap().replicas.as_ref().unwrap();
        assert_eq!(replicas.value.0, "${REDIS_REPLICAS:-1}");
        assert_eq!((replicas.defined.line(), replicas.defined.column()), (21, 17));
        assert!(file.unsupported().is_empty());
    }

    #[test]
    fn long_forms() {
        let text = r#"
services:
  edge:
    image: nginx
    ports:
      - target: 80
        published: 8080
        protocol: tcp
        mode: ingress
        proxy_protocol: v2
    networks:
      front:
        aliases: [www]
    volumes:
      - type: volume
        source: data
        target: /data
        read_only: true
      - ./conf:/etc/conf:ro
    environment:
      - COLOUR=blue
      - FROM_SHELL
    depends_on:
      db:
        condition: service_healthy
    healthcheck:
      test: ["CMD", "true"]
      interval: 5s
secrets: {}
"#;
        let file = parse("stack.yml", text).unwrap();
        let edge = &file.services["edge"].value;
        let Port::Long(port) = &edge.ports[0].value else { panic!() };
        assert_eq!(port.published.as_ref().unwrap().0, "8080");
        assert_eq!(port.proxy_protocol.as_ref().unwrap().0, "v2");
        assert_eq!(edge.ports[0].defined.line(), 6);
        assert!(matches!(&edge.volumes[1].value, Mount::Short(s) if s.0 == "./conf:/etc/conf:ro"));
        assert!(matches!(&edge.environment.as_ref().unwrap().value, MapOrList::List(l) if l.len() == 2));
        assert_eq!(file.unsupported(), ["secrets"]);
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_name_file_line_and_column() {
        let err = parse("docker-compose.yml", "services:\n  web:\n    image: nginx\n    colour: red\n")
            .unwrap_err();
        assert_eq!((err.line, err.column), (4, 5), "{err}");
        assert!(err.message.starts_with("unknown field `colour`"), "{err}");
        assert!(err.to_string().starts_with("docker-compose.yml:4:5: unknown field `colour`"), "{err}");

        let err = parse("f.yml", "services:\n  web:\n    ports: 8080\n").unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        let err = parse("f.yml", "services:\n  web:\n    deploy:\n      replicas: [1]\n").unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        let err = parse("f.yml", "services: [web]\n").unwrap_err();
        assert_eq!(err.line, 1, "{err}");
        let err = parse("f.yml", "services:\n  web:\n    image: 'open\n").unwrap_err();
        assert!(err.line >= 3, "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_or_refused(text in "(.{0,30}\n){0,6}") {
            let _ = parse("f.yml", &text);
        }
    }
}
