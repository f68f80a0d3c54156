//! Sealing: every gossip datagram and stream frame is encrypted and
//! authenticated with XChaCha20-Poly1305 under the cluster's gossip key.
//!
//! ```text
//! frame  = version (1) | key id (1) | nonce (24) | ciphertext | tag (16)
//! plain  = sender (8) | sender epoch (8) | counter (8) | payload
//! ```
//!
//! Keys live in a [`KeyRing`] by id: frames are sealed with the primary key
//! and opened with whichever key their id names, so a new key can be added
//! everywhere, made primary, and the old one removed, without downtime.
//! Each sender numbers its frames; receivers keep a sliding window per
//! (sender, epoch) and drop replays.

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::identity::NodeId;

/// Format version of sealed frames.
pub const VERSION: u8 = 1;
/// Bytes sealing adds: header, nonce, inner header and tag.
pub const OVERHEAD: usize = 2 + 24 + 24 + 16;
/// The largest frame accepted at all, checked before anything is allocated.
pub const MAX_FRAME: usize = 16 << 20;

/// Why a frame was refused. Every reason is counted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than the fixed overhead, or longer than [`MAX_FRAME`].
    #[error("frame too short or too long")]
    BadLength,
    /// An unknown format version.
    #[error("unknown frame version")]
    BadVersion,
    /// No key with this id is in the ring.
    #[error("unknown key id")]
    UnknownKey,
    /// The tag does not verify: wrong key, or tampered.
    #[error("authentication failed")]
    Unauthenticated,
    /// A frame already seen, or too old for the replay window.
    #[error("replayed frame")]
    Replayed,
}

impl OpenError {
    /// The snake_case name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            OpenError::BadLength => "bad_length",
            OpenError::BadVersion => "bad_version",
            OpenError::UnknownKey => "unknown_key",
            OpenError::Unauthenticated => "unauthenticated",
            OpenError::Replayed => "replayed",
        }
    }
}

/// Gossip keys by id, one of them primary.
#[derive(Clone)]
pub struct KeyRing {
    keys: HashMap<u8, XChaCha20Poly1305>,
    primary: u8,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing").field("primary", &self.primary).field("ids", &ids).finish()
    }
}

impl KeyRing {
    /// A ring holding one key, which is primary.
    pub fn new(id: u8, key: [u8; 32]) -> KeyRing {
        let mut keys = HashMap::new();
        keys.insert(id, XChaCha20Poly1305::new(&key.into()));
        KeyRing { keys, primary: id }
    }

    /// Adds (or replaces) a key; it seals only once made primary.
    pub fn add(&mut self, id: u8, key: [u8; 32]) {
        self.keys.insert(id, XChaCha20Poly1305::new(&key.into()));
    }

    /// Makes a key of the ring the one frames are sealed with; false if absent.
    pub fn set_primary(&mut self, id: u8) -> bool {
        let present = self.keys.contains_key(&id);
        if present {
            self.primary = id;
        }
        present
    }

    /// Removes a key other than the primary; false if absent or primary.
    pub fn remove(&mut self, id: u8) -> bool {
        id != self.primary && self.keys.remove(&id).is_some()
    }

    /// The primary key's id.
    pub fn primary(&self) -> u8 {
        self.primary
    }
}

/// Who sealed a frame, and its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The sending node.
    pub id: NodeId,
    /// Its epoch.
    pub epoch: u64,
    /// Its frame counter.
    pub counter: u64,
}

/// Seals `payload` from `sender` under the ring's primary key. `nonce` must be
/// unique per key: 24 random bytes.
#[must_use]
pub fn seal(ring: &KeyRing, sender: Sender, nonce: [u8; 24], payload: &[u8]) -> Vec<u8> {
    let cipher = &ring.keys[&ring.primary];
    let mut plain = Vec::with_capacity(24 + payload.len());
    plain.extend_from_slice(&sender.id.0.to_be_bytes());
    plain.extend_from_slice(&sender.epoch.to_be_bytes());
    plain.extend_from_slice(&sender.counter.to_be_bytes());
    plain.extend_from_slice(payload);
    let header = [VERSION, ring.primary];
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &header })
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut frame = Vec::with_capacity(2 + 24 + sealed.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&nonce);
    frame.extend_from_slice(&sealed);
    frame
}

/// Opens a frame: checks length, version, key and tag. Replay is checked by
/// the caller with a [`ReplayWindow`], once it knows the sender.
pub fn open(ring: &KeyRing, frame: &[u8]) -> Result<(Sender, Vec<u8>), OpenError> {
    if frame.len() < OVERHEAD || frame.len() > MAX_FRAME {
        return Err(OpenError::BadLength);
    }
    if frame[0] != VERSION {
        return Err(OpenError::BadVersion);
    }
    let cipher = ring.keys.get(&frame[1]).ok_or(OpenError::UnknownKey)?;
    let nonce = XNonce::from_slice(&frame[2..26]);
    let mut plain = cipher
        .decrypt(nonce, Payload { msg: &frame[26..], aad: &frame[..2] })
        .map_err(|_| OpenError::Unauthenticated)?;
    let word = |i: usize| u64::from_be_bytes(plain[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let sender = Sender { id: NodeId(word(0)), epoch: word(1), counter: word(2) };
    plain.drain(..24);
    Ok((sender, plain))
}

/// Replay protection for one sender epoch: the highest counter seen and a
/// bitmap of the 1024 below it.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: u64,
    seen: [u64; 16],
}

impl ReplayWindow {
    const SIZE: u64 = 1024;

    /// Records `counter`; false if it was seen or is older than the window.
    #[must_use = "a refused counter is a replay: drop the frame"]
    pub fn accept(&mut self, counter: u64) -> bool {
        if counter > self.highest {
            let shift = counter - self.highest;
            if shift >= Self::SIZE {
                self.seen = [0; 16];
            } else {
                for _ in 0..shift {
                    self.shift_one();
                }
            }
            self.highest = counter;
            self.set(0);
            return true;
        }
        let age = self.highest - counter;
        if age >= Self::SIZE || self.get(age) {
            return false;
        }
        self.set(age);
        true
    }

    fn shift_one(&mut self) {
        let mut carry = 0;
        for word in self.seen.iter_mut() {
            let next = *word >> 63;
            *word = (*word << 1) | carry;
            carry = next;
        }
    }

    fn get(&self, age: u64) -> bool {
        self.seen[(age / 64) as usize] & (1 << (age % 64)) != 0
    }

    fn set(&mut self, age: u64) {
        self.seen[(age / 64) as usize] |= 1 << (age % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(counter: u64) -> Sender {
        Sender { id: NodeId(7), epoch: 3, counter }
    }

    #[test]
    fn seal_then_open_round_trips() {
        let ring = KeyRing::new(1, [9; 32]);
        let frame = seal(&ring, sender(5), [4; 24], b"hello");
        assert_eq!(frame.len(), OVERHEAD + 5);
        let (who, payload) = open(&ring, &frame).unwrap();
        assert_eq!(who, sender(5));
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn wrong_key_tampering_and_garbage_are_refused() {
        let ring = KeyRing::new(1, [9; 32]);
        let other = KeyRing::new(1, [8; 32]);
        let frame = seal(&ring, sender(1), [0; 24], b"x");
        assert_eq!(open(&other, &frame).unwrap_err(), OpenError::Unauthenticated);
        let mut tampered = frame.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(&ring, &tampered).unwrap_err(), OpenError::Unauthenticated);
        let mut relabelled = frame.clone();
        relabelled[1] = 2;
        assert_eq!(open(&ring, &relabelled).unwrap_err(), OpenError::UnknownKey);
        let mut old = frame.clone();
        old[0] = 0;
        assert_eq!(open(&ring, &old).unwrap_err(), OpenError::BadVersion);
        assert_eq!(open(&ring, &frame[..OVERHEAD - 1]).unwrap_err(), OpenError::BadLength);
    }

    #[test]
    fn key_rotation_without_downtime() {
        let mut a = KeyRing::new(1, [1; 32]);
        let mut b = KeyRing::new(1, [1; 32]);
        a.add(2, [2; 32]);
        b.add(2, [2; 32]);
        assert!(a.set_primary(2));
        // b still seals with key 1, a with key 2: both open both.
        assert!(open(&b, &seal(&a, sender(1), [0; 24], b"x")).is_ok());
        assert!(open(&a, &seal(&b, sender(2), [1; 24], b"y")).is_ok());
        assert!(b.set_primary(2));
        assert!(!a.remove(2), "the primary cannot be removed");
        assert!(a.remove(1) && b.remove(1));
        assert!(open(&b, &seal(&a, sender(3), [2; 24], b"z")).is_ok());
    }

    #[test]
    fn replay_window_accepts_each_counter_once() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1));
        assert!(!w.accept(1));
        assert!(w.accept(3));
        assert!(w.accept(2), "late but inside the window");
        assert!(!w.accept(2));
        assert!(w.accept(2000));
        assert!(!w.accept(900), "older than the window");
        assert!(w.accept(1990));
        assert!(!w.accept(1990));
    }
}
