//! DEVELOPMENT ONLY: the `eds-proxy dev …` subcommands.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};

use super::keys::SigningKey;
use super::pki::CertificateAuthority;

/// The `eds-proxy dev …` subcommands.
#[derive(Subcommand)]
pub enum DevCommand {
    /// Write a development CA, a server certificate, client certificates for the sample
    /// stations and user clients, and a token-signing key with its JWKS.
    Pki {
        /// Folder to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Names (DNS or IP) for the server certificate.
        #[arg(long, default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_name: Vec<String>,
    },
    /// Run the development token issuer (client_credentials over mTLS, /jwks).
    Issuer {
        /// Issuer configuration (TOML; `hapi-compose/proxy/dev-issuer.toml` is an example).
        #[arg(long)]
        config: PathBuf,
    },
    /// Mint a certificate-bound access token (for user clients: citizen or supporter).
    MintToken {
        /// Token-signing key (PEM) written by `dev pki`.
        #[arg(long)]
        key: PathBuf,
        /// The client certificate the token is bound to (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// `iss` of the token.
        #[arg(long)]
        issuer: String,
        /// `aud` of the token.
        #[arg(long, default_value = "eds")]
        audience: String,
        /// Extra claims as a JSON object, e.g. '{"scope":"EDS user/AuditEvent.rs","cpr":"…","acr":"…"}'.
        #[arg(long)]
        claims: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime: i64,
    },
}

/// Client identities `dev pki` issues certificates for: (file name, common name, organisation).
pub const SAMPLE_CLIENTS: &[(&str, &str, &str)] = &[
    ("cura-eua", "Cura-EUA", "Systematic"),
    ("cura-msh", "Cura-MSH", "Systematic"),
    ("multimed-msh", "MultiMed-MSH", "MultiMed"),
    ("multimed-ap", "MultiMed-AP", "MultiMed"),
    ("kvalitetsit-ap", "KvalitetsIT-AP", "KvalitetsIT"),
    ("egclinea-eua", "EGClinea-EUA", "EG"),
    ("citizen-app", "Citizen app", "eds-proxy development"),
    ("support-tool", "Support tool", "eds-proxy development"),
];

/// `kid` of the development token-signing key.
pub const ISSUER_KID: &str = "dev-issuer-1";

/// Run one `dev` subcommand.
///
/// Errors: a message for the operator (file, key or certificate problems).
pub fn run(cmd: DevCommand) -> Result<(), String> {
    match cmd {
        DevCommand::Pki { out, server_name } => write_pki(&out, &server_name),
        DevCommand::Issuer { config } => {
            let server = super::issuer::build_server(super::issuer::load_config(&config)?)?;
            // As `server::run`: the log's queued lines are written before the exit.
            server.run(pingora::server::RunArgs::default());
            crate::logging::flush();
            std::process::exit(0)
        }
        DevCommand::MintToken {
            key,
            cert,
            issuer,
            audience,
            claims,
            lifetime,
        } => {
            let extra: Value = crate::fhir::strict_json::parse(claims.as_bytes())
                .map_err(|e| format!("--claims: {e}"))?;
            let token = mint(&key, &cert, &issuer, &audience, extra, lifetime)?;
            println!("{token}");
            Ok(())
        }
    }
}

fn write_pki(out: &Path, server_names: &[String]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", out.display());
    std::fs::create_dir_all(out).map_err(err)?;
    let ca = CertificateAuthority::new("eds-proxy development CA").map_err(|e| e.to_string())?;
    ca.cert.write(out, "ca").map_err(err)?;
    let names: Vec<&str> = server_names.iter().map(String::as_str).collect();
    ca.server(&names)
        .map_err(|e| e.to_string())?
        .write(out, "server")
        .map_err(err)?;
    for (file, cn, org) in SAMPLE_CLIENTS {
        ca.client(cn, org)
            .map_err(|e| e.to_string())?
            .write(out, file)
            .map_err(err)?;
    }
    let key = SigningKey::generate(ISSUER_KID)?;
    std::fs::write(out.join("issuer.key"), &key.private_pem).map_err(err)?;
    let jwks = serde_json::to_string_pretty(&key.jwks()).map_err(|e| e.to_string())?;
    std::fs::write(out.join("jwks.json"), jwks).map_err(err)?;
    std::fs::write(out.join("page-secret"), random_secret()?).map_err(err)?;
    println!(
        "development PKI written to {} (NOT for production)",
        out.display()
    );
    Ok(())
}

/// 64 hex characters from a fresh key pair's randomness (rcgen draws it from the OS).
fn random_secret() -> Result<String, String> {
    use sha2::Digest;
    let pem = rcgen::KeyPair::generate()
        .map_err(|e| e.to_string())?
        .serialize_pem();
    Ok(sha2::Sha256::digest(pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Sign a token bound to `cert_path`'s certificate with the dev issuer key.
pub fn mint(
    key: &Path,
    cert_path: &Path,
    issuer: &str,
    audience: &str,
    extra: Value,
    lifetime: i64,
) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signer = SigningKey::from_pem(ISSUER_KID, &pem)?;
    let cert = rustls_pki_types::CertificateDer::from_pem_file(cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = json!({
        "iss": issuer, "aud": audience, "iat": now, "nbf": now, "exp": now + lifetime,
        "cnf": {"x5t#S256": crate::auth::token::thumbprint_of(&cert)},
    });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    signer.sign(&claims)
}
