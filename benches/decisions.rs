//! Cost of the pure decisions on the request path, printed as figures (not asserted):
//! `cargo bench --bench decisions`. `cargo bench --bench decisions -- WORD` measures only the
//! cases whose name holds WORD; `DECISIONS_ITERATIONS=N` runs each case N times (for
//! instruction counts under callgrind).

// Benchmark code: a panic is a failure, and it reads JSON answers with plain serde_json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use eds_proxy::auth::principal::{Principal, Station};
use eds_proxy::auth::scope::Grants;
use eds_proxy::cvr_directory::CvrDirectory;
use eds_proxy::fhir::interaction::{classify, RequestParts};
use eds_proxy::fhir::labels::{Constraint, LabelSystems};
use eds_proxy::fhir::paging::PageSigner;
use eds_proxy::fhir::registration::validate_and_label;
use eds_proxy::fhir::response::{
    check_created, check_resource, check_searchset, CreatedContext, ResourceCheck, ResponseContext,
};
use serde_json::{json, Value};

fn systems() -> LabelSystems {
    LabelSystems::default()
}

fn measure(name: &str, bytes: usize, iterations: u32, mut f: impl FnMut()) {
    // `cargo bench` passes `--bench`; the first other argument filters the cases by name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_some_and(|w| !name.contains(&w)) {
        return;
    }
    let iterations = std::env::var("DECISIONS_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(iterations);
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    let per = start.elapsed() / iterations;
    let mbps = if bytes > 0 {
        bytes as f64 / per.as_secs_f64() / 1e6
    } else {
        0.0
    };
    println!(
        "{name:<40} {:>9.1} µs/op {:>8.0} MB/s",
        per.as_secs_f64() * 1e6,
        mbps
    );
}

fn main() {
    let example: Value = serde_json::from_str(include_str!(
        "../tests/fixtures/AuditEvent-EDS-PDS-01.1.json"
    ))
    .unwrap();
    let station = Station {
        device_id: "Cura-EUA".into(),
        org: Some(eds_proxy::auth::token::OrgContext {
            name: None,
            sor: "937961000016000".into(),
            gln: "GLN-1234".into(),
        }),
        grants: Grants {
            create: true,
            read: true,
            search: true,
        },
    };
    let labelled: Value = serde_json::from_slice(
        &validate_and_label(example.to_string().as_bytes(), &station, &systems())
            .unwrap()
            .body,
    )
    .unwrap();
    // HAPI builds links from X-Forwarded-*, so they already carry the public base; the
    // second bundle has the server's own base and needs every fullUrl rewritten.
    let searchset = |base: &str| {
        let entries: Vec<Value> = (0..28)
            .map(|i| {
                let mut r = labelled.clone();
                r["id"] = json!(format!("{i}"));
                json!({"fullUrl": format!("{base}/AuditEvent/{i}"), "resource": r, "search": {"mode": "match"}})
            })
            .collect();
        serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "searchset", "total": 28,
            "link": [{"relation": "self", "url": format!("{base}/AuditEvent?_security=x")},
                     {"relation": "next", "url": format!("{base}?_getpages=abc&_getpagesoffset=28&_count=28&_bundletype=searchset")}],
            "entry": entries}))
        .unwrap()
    };
    let bundle = searchset("https://proxy:8443/fhir");
    let rebased_bundle = searchset("http://hapi:8080/fhir");
    let principal = Principal::Station(station.clone());
    let constraint =
        Constraint::for_principal(&principal, &systems(), &CvrDirectory::default()).unwrap();
    let signer = PageSigner::new(vec![7; 32]);
    let key = principal.binding_key();
    let ctx = ResponseContext {
        constraint: &constraint,
        public_base: "https://proxy:8443/fhir",
        upstream_base: "http://hapi:8080/fhir",
        signer: &signer,
        principal_key: &key,
        drop_totals: false,
        max_count: 50,
        max_link_bytes: 8192,
    };
    println!("searchset of {} entries, {} bytes", 28, bundle.len());
    measure("response check (searchset)", bundle.len(), 2_000, || {
        black_box(check_searchset(black_box(&bundle), &ctx).unwrap());
    });
    measure(
        "response check, every fullUrl rebased",
        rebased_bundle.len(),
        2_000,
        || {
            black_box(check_searchset(black_box(&rebased_bundle), &ctx).unwrap());
        },
    );
    // The benchmark origin's answers (bench/fixtures.py, as bench/run.sh serves them): the
    // 77 KB 20-entry searchset of IG examples, on the public base (HAPI behind X-Forwarded-*)
    // and on the server's own base (every fullUrl rebased); the 1 KB read; the create answer.
    let fixtures = |base: &str| {
        let dir = std::env::temp_dir().join(format!(
            "eds-decisions-{}-{}",
            std::process::id(),
            base.len()
        ));
        let ok = std::process::Command::new("python3")
            .args(["bench/fixtures.py", "tests/fixtures/ig"])
            .arg(&dir)
            .arg(base)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let read = |f: &str| std::fs::read(dir.join(f)).ok();
        let out = ok.then(|| {
            (
                read("searchset.json"),
                read("read.json"),
                read("created.json"),
            )
        });
        let _ = std::fs::remove_dir_all(&dir);
        out
    };
    match (
        fixtures("https://proxy:8443/fhir"),
        fixtures("http://hapi:8080/fhir"),
    ) {
        (Some((Some(ig), Some(read), Some(created))), Some((Some(ig_rebased), _, _))) => {
            let checked = check_searchset(&ig, &ctx).unwrap();
            assert_eq!(checked.dropped, 0);
            println!("IG searchset of 20 entries, {} bytes", ig.len());
            measure(
                "response check (IG searchset, public base)",
                ig.len(),
                2_000,
                || {
                    black_box(check_searchset(black_box(&ig), &ctx).unwrap());
                },
            );
            measure(
                "response check (IG searchset, rebased)",
                ig_rebased.len(),
                2_000,
                || {
                    black_box(check_searchset(black_box(&ig_rebased), &ctx).unwrap());
                },
            );
            assert_eq!(
                check_resource(&read, &constraint, "bench-read").unwrap(),
                ResourceCheck::Visible
            );
            measure("read check (1 KB AuditEvent)", read.len(), 50_000, || {
                black_box(check_resource(black_box(&read), &constraint, "bench-read").unwrap());
            });
            let v: Value = serde_json::from_slice(&created).unwrap();
            let stamped: Vec<eds_proxy::fhir::labels::Label> = v["meta"]["security"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| eds_proxy::fhir::labels::Label {
                    system: c["system"].as_str().unwrap().into(),
                    code: c["code"].as_str().unwrap().into(),
                })
                .collect();
            let sys = systems();
            let cctx = CreatedContext {
                constraint: &constraint,
                stamped: &stamped,
                systems: &sys,
                public_base: "https://proxy:8443/fhir",
                upstream_base: "http://hapi:8080/fhir",
            };
            let location = "http://hapi:8080/fhir/AuditEvent/bench-created/_history/1";
            check_created(&created, Some(location), &cctx).unwrap();
            measure("create check (3 KB answer)", created.len(), 50_000, || {
                black_box(check_created(black_box(&created), Some(location), &cctx).unwrap());
            });
        }
        _ => println!("(IG searchset cases skipped: python3 bench/fixtures.py did not run)"),
    }
    let serde_baseline = || {
        let v: Value = serde_json::from_slice(black_box(&bundle)).unwrap();
        black_box(serde_json::to_vec(&v).unwrap());
    };
    measure(
        "baseline: serde_json Value parse + write",
        bundle.len(),
        2_000,
        serde_baseline,
    );
    // Token signature verification on a cache miss, per algorithm: the pure-Rust backend
    // (jsonwebtoken `rust_crypto`) against ring (`auth::ring_verify`, what the server uses).
    // Needs the development key generator (`dev` feature, on by default).
    #[cfg(feature = "dev")]
    {
        use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER as RUST_CRYPTO;
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
        let rsa_pem = include_str!("../tests/fixtures/keys/test-rsa-2048.pem");
        let ec = eds_proxy::dev::keys::SigningKey::generate("k").unwrap();
        let ec_jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(ec.jwk()).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let rsa_jwk = {
            // The public half, as a JWKS would give it (n, e).
            let der: Vec<u8> = {
                use base64::Engine;
                let b: String = rsa_pem
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect();
                base64::engine::general_purpose::STANDARD.decode(b).unwrap()
            };
            let (n, e) = (RUST_CRYPTO.key_utils.rsa_pub_components_from_private_key)(&der).unwrap();
            DecodingKey::from_rsa_raw_components(&n, &e)
        };
        let cases = [
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(ec.private_pem.as_bytes()).unwrap(),
                DecodingKey::from_jwk(&ec_jwk).unwrap(),
            ),
            (
                Algorithm::PS256,
                EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).unwrap(),
                rsa_jwk,
            ),
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_der(&ed.serialize_der()),
                DecodingKey::from_ed_der(ed.public_key_raw()),
            ),
        ];
        let msg = b"eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiZWRzIn0".to_vec();
        for (alg, signing, verifying) in &cases {
            let sig = (RUST_CRYPTO.signer_factory)(alg, signing)
                .unwrap()
                .try_sign(&msg)
                .unwrap();
            for (backend, provider) in [
                ("rust_crypto", &RUST_CRYPTO),
                ("ring", &eds_proxy::auth::ring_verify::PROVIDER),
            ] {
                measure(
                    &format!("token signature {alg:?} ({backend})"),
                    0,
                    2_000,
                    || {
                        let v = (provider.verifier_factory)(alg, verifying).unwrap();
                        v.verify(black_box(&msg), &sig).unwrap();
                    },
                );
            }
        }
    }
    let body = example.to_string();
    measure("registration validate + label", body.len(), 20_000, || {
        black_box(validate_and_label(black_box(body.as_bytes()), &station, &systems()).unwrap());
    });
    measure("classify + rewrite search", 0, 200_000, || {
        let parts = RequestParts {
            method: "GET",
            path: "/fhir/AuditEvent",
            query: Some("message-id=MSG1234567890&date=ge2025-01-01&_count=20&_sort=-date"),
            content_type: None,
            conditional: false,
            validators: false,
            body: b"",
        };
        if let Ok(eds_proxy::fhir::interaction::Interaction::Search(q)) =
            classify(black_box(&parts), "/fhir", 100)
        {
            black_box(q.to_query_string(&[("_security", constraint.search_value())]));
        }
    });
    // The redaction every log line passes: an access-log line (nothing to replace, the common
    // case) and a Pingora error line carrying a token and a CPR.
    let access = r#"{"client":"127.0.0.1:50312","dropped":0,"duration_ms":1.234,"interaction":"read","method":"GET","path":"/fhir/AuditEvent/{id}","principal":"citizen","reason":"ok","request_id":"1f2e-3a","status":200,"ts":"2025-11-29T21:40:00.123456789Z"}"#;
    measure("log redaction (access line)", access.len(), 200_000, || {
        black_box(eds_proxy::redact::redact(black_box(access)));
    });
    let dirty = format!(
        r"HTTP server fails: buf: GET /fhir/AuditEvent/0101019999 HTTP/1.1
Authorization: Bearer {}
",
        "eyJhbGciOiJFUzI1NiJ9.eyJjcHIiOiIwMTAxMDE5OTk5In0.c2ln".repeat(3)
    );
    measure(
        "log redaction (line with secrets)",
        dirty.len(),
        200_000,
        || {
            black_box(eds_proxy::redact::redact(black_box(&dirty)));
        },
    );
}
