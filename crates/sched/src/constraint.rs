//! Placement constraints: `node.labels.zone==east`, `node.role!=manager`...

use crate::Node;

/// A parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    field: Field,
    equal: bool,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Id,
    Hostname,
    Role,
    Os,
    Arch,
    Label(String),
}

/// Why a constraint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid constraint {0:?}: use FIELD==VALUE or FIELD!=VALUE with FIELD one of node.id, node.hostname, \
     node.role, node.platform.os, node.platform.arch, node.labels.KEY"
)]
pub struct ConstraintError(pub String);

impl std::str::FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Constraint, ConstraintError> {
        let err = || ConstraintError(s.to_owned());
        let (field, value, equal) = if let Some((f, v)) = s.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = s.split_once("!=") {
            (f, v, false)
        } else {
            return Err(err());
        };
        let (field, value) = (field.trim(), value.trim());
        if value.is_empty() {
            return Err(err());
        }
        let field = match field {
            "node.id" => Field::Id,
            "node.hostname" => Field::Hostname,
            "node.role" => Field::Role,
            "node.platform.os" => Field::Os,
            "node.platform.arch" => Field::Arch,
            f => match f.strip_prefix("node.labels.") {
                Some(key) if !key.is_empty() => Field::Label(key.to_owned()),
                _ => return Err(err()),
            },
        };
        Ok(Constraint { field, equal, value: value.to_owned() })
    }
}

impl Constraint {
    /// Whether `node` satisfies the constraint. A missing label equals
    /// nothing, so `!=` holds for it, as in Swarm.
    pub fn matches(&self, node: &Node) -> bool {
        let actual = match &self.field {
            Field::Id => Some(node.id.as_str()),
            Field::Hostname => Some(node.hostname.as_str()),
            Field::Role => Some(node.role.as_str()),
            Field::Os => Some(node.os.as_str()),
            Field::Arch => Some(node.arch.as_str()),
            Field::Label(k) => node.labels.get(k).map(String::as_str),
        };
        let same = actual.is_some_and(|a| a.eq_ignore_ascii_case(&self.value));
        same == self.equal
    }
}
