//! Connections to PostgreSQL, with TLS as libpq's `sslmode` says (rustls + ring, no OpenSSL).
//!
//! The URL takes libpq's parameters `sslmode` and `sslrootcert`:
//! - `disable`: plaintext.
//! - `prefer` (the default, as libpq's): TLS when the server offers it, plaintext otherwise; the
//!   server's certificate is not checked.
//! - `require`: TLS or no connection; the certificate is not checked, unless `sslrootcert` is given
//!   (then as `verify-ca`, as libpq does).
//! - `verify-ca`: TLS, and the certificate must chain to a CA of `sslrootcert`.
//! - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
//!
//! `verify-ca` and `verify-full` need `sslrootcert` (a PEM file of CA certificates): an error that
//! names it otherwise. A server that offers no TLS when TLS is required is refused, never used in
//! plaintext.

use crate::PgStoreError;
use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values that we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for TlsMode {
    type Err = PgStoreError;
    fn from_str(s: &str) -> Result<Self, PgStoreError> {
        Ok(match s {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(PgStoreError::Config(format!(
                    "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// Where and how to connect: the driver's configuration and the TLS connector.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    mode: TlsMode,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses a `postgres://` URL with libpq's `sslmode` and `sslrootcert`.
    pub fn parse(url: &str) -> Result<Target, PgStoreError> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut mode = None;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.parse::<TlsMode>()?),
                Some(("sslrootcert", v)) => root_cert = Some(percent_decode(v)),
                _ => rest.push(pair),
            }
        }
        let driver_url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&driver_url)
            .map_err(|e| PgStoreError::Config(format!("the database URL is not valid: {e}")))?;
        let mode = match (mode.unwrap_or(TlsMode::Prefer), &root_cert) {
            (TlsMode::Require, Some(_)) => TlsMode::VerifyCa,
            (m, _) => m,
        };
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(mode, root_cert.as_deref())?);
        Ok(Target { config, mode, tls })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// A new connection.
    pub async fn connect(&self) -> Result<AsyncPgConnection, ConnectionError> {
        if self.mode == TlsMode::Disable {
            let (client, conn) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
            return AsyncPgConnection::try_from_client_and_connection(client, conn).await;
        }
        let (client, conn) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| ConnectionError::BadConnection(describe(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, conn).await
    }

    /// Cancels the statement running on the connection `token` belongs to, over the same TLS.
    pub async fn cancel(&self, token: &tokio_postgres::CancelToken) {
        let _ = if self.mode == TlsMode::Disable {
            token.cancel_query(tokio_postgres::NoTls).await
        } else {
            token.cancel_query(self.tls.clone()).await
        };
    }
}

/// The driver's error with its causes (a certificate error is in the source chain).
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `%2F` and friends in a file path given in a URL.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: TlsMode, root_cert: Option<&str>) -> Result<ClientConfig, PgStoreError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgStoreError::Config(format!("TLS: {e}")))?;
    let roots = match root_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| PgStoreError::Config(format!("sslrootcert {path}: {e}")))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| PgStoreError::Config(format!("sslrootcert {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| PgStoreError::Config(format!("sslrootcert {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(PgStoreError::Config(format!(
                    "sslrootcert {path}: no certificate in the file"
                )));
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    Ok(match (mode, roots) {
        (TlsMode::VerifyFull, Some(roots)) => {
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (TlsMode::VerifyCa, Some(roots)) => {
            let inner =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| PgStoreError::Config(format!("sslrootcert: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CaOnly(inner)))
                .with_no_client_auth()
        }
        (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
            return Err(PgStoreError::Config(
                "sslmode verify-ca and verify-full need sslrootcert=<PEM file of the CA> in the database URL".into(),
            ));
        }
        // disable (unused), prefer, require: encrypted, the certificate unchecked (libpq's meaning).
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider())))
            .with_no_client_auth(),
    })
}

/// `verify-ca`: the chain must lead to a configured CA; the name is not checked.
#[derive(Debug)]
struct CaOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a CA: encrypted, the certificate not checked (libpq's meaning); the
/// handshake's signatures are still verified.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to `url` (for tools and migrations; the pool keeps its own [`Target`]).
pub async fn establish(url: &str) -> Result<AsyncPgConnection, PgStoreError> {
    Target::parse(url)?
        .connect()
        .await
        .map_err(|e| PgStoreError::Connect(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_others_are_refused_by_name() {
        for (s, m) in [
            ("disable", TlsMode::Disable),
            ("prefer", TlsMode::Prefer),
            ("require", TlsMode::Require),
            ("verify-ca", TlsMode::VerifyCa),
            ("verify-full", TlsMode::VerifyFull),
        ] {
            assert_eq!(s.parse::<TlsMode>().ok(), Some(m));
        }
        let e = "allow-all".parse::<TlsMode>().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("allow-all")));
    }

    #[test]
    fn the_default_is_prefer_and_verification_needs_a_ca() {
        let t = Target::parse("postgres://u@127.0.0.1:5432/db").ok();
        assert_eq!(t.map(|t| t.mode()), Some(TlsMode::Prefer));
        let e = Target::parse("postgres://u@127.0.0.1/db?sslmode=verify-full")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("sslrootcert"), "{e}");
        let e = Target::parse("postgres://u@h/db?sslmode=require&sslrootcert=/no/such/ca.pem")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/no/such/ca.pem"), "{e}");
    }

    #[test]
    fn other_parameters_reach_the_driver_and_paths_are_decoded() {
        let t = Target::parse("postgres://u@h/db?application_name=ds&sslmode=disable").ok();
        assert_eq!(
            t.as_ref().and_then(|t| t.config.get_application_name()),
            Some("ds")
        );
        assert_eq!(percent_decode("%2Fetc%2Fca.pem"), "/etc/ca.pem");
    }
}
