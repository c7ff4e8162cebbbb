//! Cost of validating an access token on a token-cache miss, per signature algorithm (issue 10,
//! target: ≤ 100 µs each for PS256, ES256, EdDSA), printed as figures (not asserted):
//! `cargo bench --bench tokens`. bench/run.sh runs it and judges the target.
//!
//! A miss costs what `gateway::authn` does before it caches: `read_header` (header rules,
//! algorithm allow-list) and `verify` (signature with the JWKS key, registered claims,
//! lifetime, payload members, RFC 8705 binding). Keys come from a JWK Set read by
//! `parse_jwks`, as in production; the private keys are made by `openssl genpkey` (rcgen's
//! ring backend cannot make RSA keys), so `openssl` must be on the PATH.

// Benchmark code: a panic is a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use eds_proxy::auth::jwks::parse_jwks;
use eds_proxy::auth::token::{read_header, thumbprint_of, verify, TokenPolicy};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh private key (PKCS#8 PEM) and its public JWK, for `alg`.
fn key_pair(dir: &Path, alg: Algorithm) -> (EncodingKey, Value) {
    let (name, gen): (&str, &[&str]) = match alg {
        Algorithm::PS256 => (
            "ps256",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        Algorithm::ES256 => (
            "es256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        _ => ("eddsa", &["-algorithm", "ed25519"]),
    };
    let path = dir.join(format!("{name}.key"));
    let path_s = path.to_str().unwrap();
    let mut args = vec!["genpkey"];
    args.extend_from_slice(gen);
    args.extend_from_slice(&["-out", path_s]);
    openssl(&args);
    let pem = std::fs::read(&path).unwrap();
    let spki = openssl(&["pkey", "-in", path_s, "-pubout", "-outform", "DER"]);
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    match alg {
        Algorithm::PS256 => {
            let modulus =
                String::from_utf8(openssl(&["rsa", "-in", path_s, "-noout", "-modulus"])).unwrap();
            let hex = modulus.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (
                EncodingKey::from_rsa_pem(&pem).unwrap(),
                json!({"kty": "RSA", "kid": name, "alg": "PS256", "use": "sig", "n": b64(&n), "e": "AQAB"}),
            )
        }
        Algorithm::ES256 => {
            // SPKI of a P-256 key ends in the uncompressed point 0x04 || X || Y.
            let point = &spki[spki.len() - 65..];
            (
                EncodingKey::from_ec_pem(&pem).unwrap(),
                json!({"kty": "EC", "crv": "P-256", "kid": name, "alg": "ES256", "use": "sig",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
            )
        }
        _ => {
            // SPKI of an Ed25519 key ends in the 32-byte public key.
            let x = &spki[spki.len() - 32..];
            (
                EncodingKey::from_ed_pem(&pem).unwrap(),
                json!({"kty": "OKP", "crv": "Ed25519", "kid": name, "alg": "EdDSA", "use": "sig", "x": b64(x)}),
            )
        }
    }
}

fn main() {
    // The backend the proxy uses (auth::ring_verify: ring for ES/PS/RS, ed25519-dalek for EdDSA).
    eds_proxy::auth::ring_verify::install();
    let dir = std::env::temp_dir().join(format!("eds-bench-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = TokenPolicy {
        issuer: "https://localhost:9443".into(),
        audiences: vec!["eds".into()],
        algorithms: vec![Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA],
        leeway_seconds: 30,
        max_lifetime_seconds: 3600,
    };
    let cert_der = b"the client certificate's DER stands in here";
    let cert_sha256: [u8; 32] = Sha256::digest(cert_der).into();
    let now = jsonwebtoken::get_current_timestamp() as i64;
    // A station token as the dev issuer makes it (README, "Development tools").
    let claims = json!({
        "iss": policy.issuer, "aud": "eds", "iat": now, "nbf": now, "exp": now + 3000,
        "scope": "EDS system/AuditEvent.crs SOR:937961000016000 GLN:GLN-1234",
        "ehmi:eer:device_id": "Cura-EUA",
        "ehmi:org_context": {"name": "Aarhus Kommune", "sor": "937961000016000", "gln": "GLN-1234"},
        "cnf": {"x5t#S256": thumbprint_of(cert_der)},
    });
    let iterations: u32 = std::env::var("TOKEN_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    println!("token validation on a cache miss (read_header + verify), {iterations} iterations");
    for alg in [Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA] {
        let (signing, jwk) = key_pair(&dir, alg);
        let kid = jwk["kid"].as_str().unwrap().to_string();
        let keys = parse_jwks(&json!({"keys": [jwk]}).to_string()).unwrap();
        let vkey = &keys[&kid];
        let mut header = Header::new(alg);
        header.kid = Some(kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
        let once = || {
            let h = read_header(black_box(&token), &policy).unwrap();
            black_box(verify(&token, &h, vkey, &policy, &cert_sha256, now).unwrap());
        };
        for _ in 0..iterations / 10 {
            once();
        }
        let start = Instant::now();
        for _ in 0..iterations {
            once();
        }
        let per = start.elapsed() / iterations;
        println!(
            "token miss {:<6} {:>9.1} µs/op",
            format!("{alg:?}"),
            per.as_secs_f64() * 1e6
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
