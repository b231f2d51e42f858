//! RFC 8291 message encryption of a Web Push payload (`aes128gcm`, RFC 8188), with OpenSSL.
//!
//! Owns the encryption only; [`super::push`] signs (VAPID) and sends the request.
//!
//! It replaces `ece::encrypt`, which web-push calls, because that one runs OpenSSL 3's full
//! public-key check on the subscription's key for every message (`EVP_PKEY_derive_set_peer`,
//! whose order check is a scalar multiplication by the group order): 27 % of the worker's
//! instructions in the end-to-end burst's callgrind profile (BENCHMARKS.md). P-256 has cofactor 1,
//! so a point that decodes onto the curve (`EC_POINT_oct2point` checks that) already has the
//! group's order; that decode is the validation the key needs. What RFC 8291 asks for per
//! message stays per message: a fresh ephemeral key pair and a random salt.

use std::sync::OnceLock;

use hmac_sha256::HMAC;
use openssl::{
    bn::{BigNum, BigNumContext},
    ec::{EcGroup, EcKey, EcPoint, PointConversionForm},
    nid::Nid,
    symm::{Cipher, encrypt_aead},
};

/// The record size written in the header; one record holds any Web Push payload (at most
/// 4096 bytes reach the push service).
const RECORD_SIZE: u32 = 4096;

/// Length of an uncompressed P-256 point.
const POINT_LEN: usize = 65;

/// Why a payload could not be encrypted.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    /// The subscription's `p256dh` or `auth` is unusable (the subscription is broken for good).
    #[error("invalid subscription key: {0}")]
    Key(String),
    /// OpenSSL failed.
    #[error("encryption failed: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// P-256, built once (building it costs more than the AES-GCM and HKDF of a message).
fn p256() -> Result<&'static EcGroup, EncryptError> {
    static GROUP: OnceLock<EcGroup> = OnceLock::new();
    if let Some(g) = GROUP.get() {
        return Ok(g);
    }
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(GROUP.get_or_init(|| group))
}

/// Encrypts `plaintext` for the user agent whose key is `ua_public` (65 bytes, uncompressed
/// P-256) and whose authentication secret is `auth_secret` (16 bytes): the `aes128gcm` body,
/// header (salt, record size, the ephemeral public key as key id) and one record.
pub fn encrypt(ua_public: &[u8], auth_secret: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
    if ua_public.len() != POINT_LEN || ua_public[0] != 0x04 {
        return Err(EncryptError::Key("p256dh is not an uncompressed P-256 point".into()));
    }
    if auth_secret.len() != 16 {
        return Err(EncryptError::Key(format!("auth is {} bytes, not 16", auth_secret.len())));
    }
    let group = p256()?;
    let mut ctx = BigNumContext::new()?;
    let ua_point =
        EcPoint::from_bytes(group, ua_public, &mut ctx).map_err(|e| EncryptError::Key(format!("p256dh is not a point of P-256: {e}")))?;

    // A fresh key pair per message (RFC 8291 section 3.1) and the ECDH secret: the x coordinate.
    let as_key = EcKey::generate(group)?;
    let as_public = as_key.public_key().to_bytes(group, PointConversionForm::UNCOMPRESSED, &mut ctx)?;
    let mut shared = EcPoint::new(group)?;
    shared.mul2(group, &ua_point, as_key.private_key(), &mut ctx)?;
    let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
    shared.affine_coordinates(group, &mut x, &mut y, &mut ctx)?;
    let ecdh_secret = x.to_vec_padded(32)?;

    // RFC 8291 section 3.3: IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" || 0x00 ||
    // ua_public || as_public, 32); every HKDF here needs one block, T(1) = HMAC(PRK, info || 0x01).
    let prk_key = HMAC::mac(&ecdh_secret, auth_secret);
    let mut key_info = Vec::with_capacity(14 + 2 * POINT_LEN + 1);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(&as_public);
    key_info.push(1);
    let ikm = HMAC::mac(&key_info, prk_key);

    // RFC 8188 section 2.2-2.3: CEK and nonce from a random salt.
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt)?;
    let prk = HMAC::mac(ikm, salt);
    let cek = HMAC::mac(b"Content-Encoding: aes128gcm\0\x01", prk);
    let nonce = HMAC::mac(b"Content-Encoding: nonce\0\x01", prk);

    // One record, the last: the plaintext and the padding delimiter 2.
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2);
    let mut tag = [0u8; 16];
    let sealed = encrypt_aead(Cipher::aes_128_gcm(), &cek[..16], Some(&nonce[..12]), &[], &record, &mut tag)?;

    let mut out = Vec::with_capacity(16 + 4 + 1 + POINT_LEN + sealed.len() + tag.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(POINT_LEN as u8);
    out.extend_from_slice(&as_public);
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&tag);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user agent's key pair and auth secret, as a browser makes them.
    fn user_agent() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let public = key
            .public_key()
            .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap();
        let private = key.private_key().to_vec_padded(32).unwrap();
        let mut auth = vec![0u8; 16];
        openssl::rand::rand_bytes(&mut auth).unwrap();
        (private, public, auth)
    }

    #[test]
    fn ece_decrypts_what_we_encrypt() {
        let (private, public, auth) = user_agent();
        for plaintext in [&b"{\"title\":\"Lesson tomorrow\"}"[..], b"", &[b'x'; 3052][..]] {
            let body = encrypt(&public, &auth, plaintext).unwrap();
            let components = ece::EcKeyComponents::new(private.clone(), public.clone());
            assert_eq!(ece::decrypt(&components, &auth, &body).unwrap(), plaintext);
        }
        // A fresh key pair and salt every time.
        let (a, b) = (encrypt(&public, &auth, b"same").unwrap(), encrypt(&public, &auth, b"same").unwrap());
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "ephemeral key");
    }

    #[test]
    fn a_key_off_the_curve_or_a_short_secret_is_refused() {
        let (_, mut public, auth) = user_agent();
        assert!(matches!(encrypt(&public, &auth[..8], b"x"), Err(EncryptError::Key(_))));
        assert!(matches!(encrypt(&public[..33], &auth, b"x"), Err(EncryptError::Key(_))));
        public[64] ^= 1;
        assert!(matches!(encrypt(&public, &auth, b"x"), Err(EncryptError::Key(_))));
    }
}
