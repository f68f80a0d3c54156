//! Gossip key files and every secret the agent makes, from the operating
//! system's random source (through ring, like the control plane's).

use std::path::Path;

use shoal_gossip::KeyRing;

use crate::error::Error;

/// Parses key-file text: one key a line, `ID:HEX` (a byte id, 32 bytes in
/// hex); the first line is the primary key; `#` starts a comment.
pub fn parse(text: &str, origin: &str) -> Result<KeyRing, Error> {
    let mut ring: Option<KeyRing> = None;
    for (n, line) in
        text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
    {
        let bad = || {
            Error::Invalid(format!(
                "{origin}:{}: expected ID:HEX with a key id 0-255 and 64 hex digits",
                n + 1
            ))
        };
        let (id, hex) = line.split_once(':').ok_or_else(bad)?;
        let id: u8 = id.trim().parse().map_err(|_| bad())?;
        let key = parse_hex_key(hex.trim()).ok_or_else(bad)?;
        match ring.as_mut() {
            None => ring = Some(KeyRing::new(id, key)),
            Some(r) => r.add(id, key),
        }
    }
    ring.ok_or_else(|| Error::Invalid(format!("gossip key file {origin} holds no key")))
}

/// Reads a gossip key file.
pub fn read_file(path: &Path) -> Result<KeyRing, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Invalid(format!(
            "read gossip key file {}: {e}: create one with `shoal gossip keygen > FILE`",
            path.display()
        ))
    })?;
    parse(&text, &path.display().to_string())
}

fn parse_hex_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}

/// A new gossip key line, `1:HEX`.
pub fn keygen() -> Result<String, Error> {
    let key = shoal_control::ca::random::<32>()?;
    Ok(format!("1:{}", key.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// 8 random bytes.
pub fn random_u64() -> Result<u64, Error> {
    Ok(u64::from_le_bytes(shoal_control::ca::random::<8>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_and_bad_ones_say_why() {
        let dir = std::env::temp_dir().join(format!("shoal-keytest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, format!("# gossip keys\n{}\n2:{}\n", keygen().unwrap(), "ab".repeat(32)))
            .unwrap();
        let ring = read_file(&file).unwrap();
        assert_eq!(ring.primary(), 1);
        std::fs::write(&file, "1:abcd\n").unwrap();
        let err = read_file(&file).unwrap_err().to_string();
        assert!(err.contains("expected ID:HEX"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_file(&file).unwrap_err().to_string().contains("holds no key"));
        let err = read_file(&dir.join("missing")).unwrap_err().to_string();
        assert!(err.contains("shoal gossip keygen"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_differ() {
        assert_ne!(keygen().unwrap(), keygen().unwrap());
        assert_eq!(keygen().unwrap().len(), 2 + 64);
    }
}
