//! Credentials and TLS for the NATS link: what the options and the server
//! URLs say, applied to async-nats's options. Nothing here ever puts a
//! password, token or seed into an error message.

use std::sync::Arc;

use async_nats::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use async_nats::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};
use napi_derive::napi;
use percent_encoding::percent_decode_str;

use crate::error::{ErrorCode, JetstanError, Result};
use crate::options::ConnectOptions;

/// `tls` as JS resolved it: PEM contents (files already read), whether to
/// verify the server, and whether to start with the TLS handshake.
#[napi(object)]
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub verify: Option<bool>,
    pub handshake_first: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlCredentials {
    UserPass(String, String),
    Token(String),
}

/// `user:pass@` or `token@` in a server URL, as the NATS clients read them.
fn url_credentials(url: &str) -> Option<UrlCredentials> {
    let parsed = url::Url::parse(url).ok()?;
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let user = decode(parsed.username());
    match parsed.password() {
        Some(pass) => Some(UrlCredentials::UserPass(user, decode(pass))),
        None if !user.is_empty() => Some(UrlCredentials::Token(user)),
        None => None,
    }
}

/// The URL without its credentials, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}

/// Who the connection authenticates as, for messages: the user's name, or
/// the kind of credential.
pub fn identity(options: &ConnectOptions, urls: &[String]) -> String {
    if options.credentials.is_some() {
        return "with the user credentials file".to_string();
    }
    if options.nkey_seed.is_some() {
        return "with an nkey".to_string();
    }
    if let Some(user) = &options.user {
        return format!("as user '{user}'");
    }
    if options.token.is_some() {
        return "with a token".to_string();
    }
    match urls.iter().find_map(|url| url_credentials(url)) {
        Some(UrlCredentials::UserPass(user, _)) => format!("as user '{user}'"),
        Some(UrlCredentials::Token(_)) => "with a token".to_string(),
        None => "without credentials".to_string(),
    }
}

/// Applies the credentials: explicit options first, else the URLs'. async-nats
/// authenticates to every server of the pool alike, so URLs that carry
/// different credentials are refused rather than half-honoured.
pub fn apply(
    mut nats: async_nats::ConnectOptions,
    options: &ConnectOptions,
    urls: &[String],
) -> Result<async_nats::ConnectOptions> {
    if let Some(creds) = &options.credentials {
        nats = nats.credentials(creds).map_err(|err| {
            JetstanError::new(
                ErrorCode::BadOption,
                format!("stan: userCreds is not a NATS credentials file: {err}"),
            )
        })?;
    }
    if let Some(seed) = &options.nkey_seed {
        nats = nats.nkey(seed.clone());
    }
    if let (Some(user), Some(pass)) = (&options.user, &options.pass) {
        nats = nats.user_and_password(user.clone(), pass.clone());
    } else if let Some(token) = &options.token {
        nats = nats.token(token.clone());
    } else {
        let mut found = urls.iter().filter_map(|url| url_credentials(url));
        if let Some(first) = found.next() {
            if found.any(|other| other != first) {
                return Err(JetstanError::new(
                    ErrorCode::BadOption,
                    "stan: the server URLs carry different credentials; jetstan authenticates to \
                     every server alike: give them once, as 'user'/'pass' or 'token'",
                ));
            }
            nats = match first {
                UrlCredentials::UserPass(user, pass) => nats.user_and_password(user, pass),
                UrlCredentials::Token(token) => nats.token(token),
            };
        }
    }
    if let Some(tls) = &options.tls {
        nats = nats.require_tls(true);
        if tls.handshake_first == Some(true) {
            nats = nats.tls_first();
        }
        if tls.ca.is_some() || tls.cert.is_some() || tls.verify == Some(false) {
            nats = nats.tls_client_config(client_config(tls)?);
        }
    }
    Ok(nats)
}

fn tls_error(what: &str, err: impl std::fmt::Display) -> JetstanError {
    JetstanError::new(ErrorCode::TlsError, format!("stan: tls {what}: {err}"))
}

fn client_config(tls: &TlsOptions) -> Result<ClientConfig> {
    let builder = if tls.verify == Some(false) {
        ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny::new()?))
    } else {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    let cert = cert.map_err(|err| tls_error("ca", err))?;
                    roots.add(cert).map_err(|err| tls_error("ca", err))?;
                }
                if roots.is_empty() {
                    return Err(tls_error("ca", "no certificate in it"));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        ClientConfig::builder().with_root_certificates(roots)
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|err| tls_error("cert", err))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|err| tls_error("key", err))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| tls_error("cert/key", err))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(JetstanError::new(
            ErrorCode::BadOption,
            "stan: tls.cert and tls.key go together",
        )),
    }
}

/// `rejectUnauthorized: false`: any certificate is accepted (the handshake
/// signatures are still checked); for test servers only.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl AcceptAny {
    fn new() -> Result<AcceptAny> {
        rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .or_else(|| Some(Arc::new(rustls::crypto::ring::default_provider())))
            .map(AcceptAny)
            .ok_or_else(|| tls_error("setup", "no crypto provider"))
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_hides_url_credentials() {
        assert_eq!(
            url_credentials("nats://alice:s%40cret@nats:4222"),
            Some(UrlCredentials::UserPass("alice".into(), "s@cret".into()))
        );
        assert_eq!(
            url_credentials("tls://t0ken@nats:4222"),
            Some(UrlCredentials::Token("t0ken".into()))
        );
        assert_eq!(url_credentials("nats://nats:4222"), None);
        assert_eq!(redact("nats://alice:secret@nats:4222"), "nats://nats:4222");
        assert_eq!(redact("nats://nats:4222"), "nats://nats:4222");
    }

    #[test]
    fn different_credentials_per_server_are_refused() {
        let options = ConnectOptions::default();
        let urls = vec![
            "nats://a:1@h1:4222".to_string(),
            "nats://b:2@h2:4222".to_string(),
        ];
        let refused = apply(async_nats::ConnectOptions::new(), &options, &urls);
        assert!(matches!(refused, Err(err) if err.code == ErrorCode::BadOption));
        let same = vec![
            "nats://a:1@h1:4222".to_string(),
            "nats://a:1@h2:4222".to_string(),
            "nats://h3:4222".to_string(),
        ];
        assert!(apply(async_nats::ConnectOptions::new(), &options, &same).is_ok());
    }
}
