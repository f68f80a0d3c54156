//! Serde through a type's text form (`Display` and `FromStr`), for values
//! such as subnets that are stored and sent as `"10.0.1.0/24"`.

use serde::{Deserialize, Deserializer, Serializer};

/// Serialises `value` as its text.
pub fn serialize<T: std::fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Parses the text form.
pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
    D: Deserializer<'de>,
{
    let text = std::borrow::Cow::<str>::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}
