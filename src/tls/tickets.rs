//! TLS session tickets (resumption without server-side state) sealed with keys edgepin
//! holds itself, so that `edgepin upgrade` can hand them to the new process and clients
//! resume their sessions across the swap.
//!
//! rustls' own `Ticketer` keeps its keys private (there is no way to read or set them),
//! which is why this exists. Same scheme in spirit: AES-256-GCM, a 16-byte key name in
//! front of each ticket to find its key, a random nonce per ticket, the name as
//! associated data. A key seals tickets for [`KEY_LIFETIME`], then only opens them for
//! one more lifetime (the previous key), then is forgotten: that bounds how long a stolen
//! key can decrypt recorded sessions (forward secrecy of resumed sessions), as rustls'
//! rotation does. Keys are made from the system's random source and never logged.
//!
//! This module only seals and opens tickets and hands the keys over (`export`/`import`);
//! the listener's rustls config (`tls::server_config`) uses it, the upgrade carries it.

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use serde::{Deserialize, Serialize};

/// How long one key seals new tickets; it opens them for as long again after that. Also
/// the lifetime hint given to clients (rustls' `Ticketer` uses the same six hours).
pub const KEY_LIFETIME: Duration = Duration::from_secs(6 * 3600);

const NAME_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// A key as handed to a successor process (base64 fields).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKey {
    pub name: String,
    pub secret: String,
    /// When it started sealing tickets (seconds since the Unix epoch).
    pub created_unix: u64,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &self.name)
            .field("created_unix", &self.created_unix)
            .finish_non_exhaustive()
    }
}

struct Key {
    name: [u8; NAME_LEN],
    secret: [u8; SECRET_LEN],
    sealing: LessSafeKey,
    created: SystemTime,
}

impl Key {
    fn new(name: [u8; NAME_LEN], secret: [u8; SECRET_LEN], created: SystemTime) -> Option<Key> {
        let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &secret).ok()?);
        Some(Key {
            name,
            secret,
            sealing,
            created,
        })
    }

    fn random(rng: &SystemRandom, created: SystemTime) -> Option<Key> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut name).ok()?;
        rng.fill(&mut secret).ok()?;
        Key::new(name, secret, created)
    }

    fn export(&self) -> TicketKey {
        TicketKey {
            name: B64.encode(self.name),
            secret: B64.encode(self.secret),
            created_unix: unix(self.created),
        }
    }

    fn import(k: &TicketKey) -> Option<Key> {
        let name: [u8; NAME_LEN] = B64.decode(&k.name).ok()?.try_into().ok()?;
        let secret: [u8; SECRET_LEN] = B64.decode(&k.secret).ok()?.try_into().ok()?;
        Key::new(
            name,
            secret,
            SystemTime::UNIX_EPOCH + Duration::from_secs(k.created_unix),
        )
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// The ticket keys of the https listener (see the module docs).
pub struct TicketKeys {
    rng: SystemRandom,
    keys: RwLock<Option<Keys>>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys").finish_non_exhaustive()
    }
}

impl Default for TicketKeys {
    fn default() -> Self {
        let rng = SystemRandom::new();
        let keys = Key::random(&rng, SystemTime::now()).map(|current| Keys {
            current,
            previous: None,
        });
        if keys.is_none() {
            tracing::error!("no random source for TLS ticket keys: sessions resume by the session cache only");
        }
        TicketKeys {
            rng,
            keys: RwLock::new(keys),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TicketKeys {
    /// The keys in use (current first), for a successor process.
    pub fn export(&self) -> Vec<TicketKey> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .flat_map(|k| std::iter::once(&k.current).chain(k.previous.iter()))
            .map(Key::export)
            .collect()
    }

    /// Use a predecessor's keys (current first); malformed ones are skipped, and with
    /// none usable the own keys stay. Returns how many were taken.
    pub fn import(&self, keys: &[TicketKey]) -> usize {
        let mut taken = keys.iter().filter_map(Key::import);
        let Some(current) = taken.next() else { return 0 };
        let previous = taken.next();
        let n = 1 + usize::from(previous.is_some());
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Keys { current, previous });
        n
    }

    /// Start a new key once the current one has sealed for its lifetime.
    fn rotate_if_due(&self, now: SystemTime) {
        let due = |k: &Keys| {
            now.duration_since(k.current.created)
                .is_ok_and(|age| age >= KEY_LIFETIME)
        };
        if !self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(due)
        {
            return;
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.take() {
            *keys = match Key::random(&self.rng, now) {
                Some(fresh) if due(&k) => Some(Keys {
                    current: fresh,
                    previous: Some(k.current),
                }),
                _ => Some(k),
            };
        }
    }

    fn seal(&self, plain: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        self.rotate_if_due(now);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = &keys.as_ref()?.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.sealing
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&key.name), &mut sealed)
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, ticket: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let keys = keys.as_ref()?;
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.iter())
            .find(|k| k.name == name)?;
        // A previous key opens tickets for one more lifetime after it stopped sealing.
        if now.duration_since(key.created).is_ok_and(|age| age >= 2 * KEY_LIFETIME) {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let len = key
            .sealing
            .open_in_place(nonce, Aad::from(name), &mut plain)
            .ok()?
            .len();
        plain.truncate(len);
        Some(plain)
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        KEY_LIFETIME.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, SystemTime::now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_with_its_keys_and_in_a_process_that_imported_them() {
        let old = TicketKeys::default();
        let ticket = old.encrypt(b"session state").unwrap();
        assert_eq!(old.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let stranger = TicketKeys::default();
        assert_eq!(stranger.decrypt(&ticket), None, "other keys cannot open it");
        let new = TicketKeys::default();
        assert_eq!(new.import(&old.export()), 1);
        assert_eq!(new.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let back = new.encrypt(b"next").unwrap();
        assert_eq!(old.decrypt(&back).as_deref(), Some(&b"next"[..]), "same keys both ways");
    }

    #[test]
    fn tampered_or_short_tickets_do_not_open() {
        let keys = TicketKeys::default();
        let mut ticket = keys.encrypt(b"x").unwrap();
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(keys.decrypt(&ticket), None);
        assert_eq!(keys.decrypt(&ticket[..20]), None);
        assert_eq!(keys.decrypt(&[]), None);
    }

    #[test]
    fn keys_rotate_and_old_tickets_open_for_one_more_lifetime() {
        let keys = TicketKeys::default();
        let t0 = SystemTime::now();
        let first = keys.seal(b"a", t0).unwrap();
        let later = t0 + KEY_LIFETIME + Duration::from_secs(1);
        let second = keys.seal(b"b", later).unwrap();
        assert_ne!(first[..NAME_LEN], second[..NAME_LEN], "a new key after its lifetime");
        assert_eq!(keys.export().len(), 2, "current and previous");
        assert_eq!(keys.open(&first, later).as_deref(), Some(&b"a"[..]));
        let too_late = t0 + 2 * KEY_LIFETIME + Duration::from_secs(2);
        assert_eq!(keys.open(&first, too_late), None, "the previous key expires");
        assert_eq!(keys.open(&second, too_late).as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn malformed_imports_keep_the_own_keys() {
        let keys = TicketKeys::default();
        let ticket = keys.encrypt(b"x").unwrap();
        let bad = TicketKey {
            name: "not base64!".into(),
            secret: B64.encode([0u8; 5]),
            created_unix: 0,
        };
        assert_eq!(keys.import(&[bad]), 0);
        assert!(keys.decrypt(&ticket).is_some());
        assert!(
            !format!("{:?}", keys.export()).contains(&keys.export()[0].secret),
            "no secret in Debug"
        );
    }
}
