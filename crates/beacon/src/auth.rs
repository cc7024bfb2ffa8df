//! The shared-cookie challenge–response, both ways, with HMAC-SHA256.
//!
//! The client sends a random nonce in `hello`; the beacon answers with its own nonce in
//! `challenge`; the client proves it knows the cookie with
//! `HMAC(cookie, "troupe-beacon/1 client\n" + beacon_nonce + "\n" + client_nonce)`, and the
//! beacon proves the same to the client with the label `server` and the nonces swapped. Only
//! nonces and MACs cross the wire, never the cookie; fresh nonces make every proof single-use,
//! and the two labels keep a proof from one side from being replayed as the other's. Proofs
//! are compared in constant time.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of randomness in a nonce.
pub const NONCE_BYTES: usize = 32;

/// The cluster's shared secret. Its `Debug` output never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(Arc<[u8]>);

impl Cookie {
    /// A cookie from its text. Leading and trailing whitespace is not part of it.
    pub fn new(text: &str) -> Option<Cookie> {
        let text = text.trim();
        (!text.is_empty()).then(|| Cookie(Arc::from(text.as_bytes())))
    }

    fn mac(&self, label: &str, first: &str, second: &str) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(b"troupe-beacon/1 ");
        mac.update(label.as_bytes());
        mac.update(b"\n");
        mac.update(first.as_bytes());
        mac.update(b"\n");
        mac.update(second.as_bytes());
        mac
    }

    fn prove(&self, label: &str, first: &str, second: &str) -> String {
        hex::encode(self.mac(label, first, second).finalize().into_bytes())
    }

    fn verify(&self, label: &str, first: &str, second: &str, proof: &str) -> bool {
        match hex::decode(proof) {
            Ok(bytes) => self.mac(label, first, second).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// The client's proof for a challenge.
    pub fn client_proof(&self, beacon_nonce: &str, client_nonce: &str) -> String {
        self.prove("client", beacon_nonce, client_nonce)
    }

    /// Whether `proof` is the client's proof for this exchange.
    pub fn verify_client(&self, beacon_nonce: &str, client_nonce: &str, proof: &str) -> bool {
        self.verify("client", beacon_nonce, client_nonce, proof)
    }

    /// The beacon's proof for this exchange.
    pub fn server_proof(&self, client_nonce: &str, beacon_nonce: &str) -> String {
        self.prove("server", client_nonce, beacon_nonce)
    }

    /// Whether `proof` is the beacon's proof for this exchange.
    pub fn verify_server(&self, client_nonce: &str, beacon_nonce: &str, proof: &str) -> bool {
        self.verify("server", client_nonce, beacon_nonce, proof)
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<secret>)")
    }
}

/// A fresh random nonce, hex.
pub fn nonce(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn proofs_verify_only_with_the_same_cookie_and_nonces() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (cn, sn) = (nonce(&mut rng), nonce(&mut rng));
        let cookie = Cookie::new("secret").unwrap();
        let other = Cookie::new("guess").unwrap();
        let proof = cookie.client_proof(&sn, &cn);
        assert!(!proof.contains("secret"));
        assert!(cookie.verify_client(&sn, &cn, &proof));
        assert!(!other.verify_client(&sn, &cn, &proof));
        assert!(!cookie.verify_client(&sn, &nonce(&mut rng), &proof));
        // A client proof is not a server proof for the same nonces.
        assert!(!cookie.verify_server(&cn, &sn, &proof));
        let server = cookie.server_proof(&cn, &sn);
        assert!(cookie.verify_server(&cn, &sn, &server));
        assert!(!cookie.verify_server(&cn, &sn, "not hex"));
    }

    #[test]
    fn cookies_are_trimmed_and_never_shown() {
        assert!(Cookie::new("  \n").is_none());
        assert_eq!(Cookie::new(" a\n"), Cookie::new("a"));
        assert_eq!(
            format!("{:?}", Cookie::new("hunter2").unwrap()),
            "Cookie(<secret>)"
        );
    }
}
